import dataclasses

import pytest

from kvm.cmdline import (
    DiskSpec,
    InstanceSpec,
    NicSpec,
    SpecError,
    build_argv,
    check_instance_name,
    run_paths,
)
from kvm.hvparams import HvParams

UUID = "3b6c1f42-9d7e-4c1a-8e0f-2a5b6c7d8e9f"
PATHS = run_paths("/run/corral", "web1")


def make_spec(**hv_fields: object) -> InstanceSpec:
    return InstanceSpec(
        name="web1",
        uuid=UUID,
        memory_mib=512,
        vcpus=2,
        hv=HvParams(**hv_fields),  # type: ignore[arg-type]
        disks=(DiskSpec("/var/lib/corral/web1-0.qcow2", "qcow2"),),
        nics=(NicSpec("52:54:00:12:34:56", "user"),),
    )


def option(argv: list[str], flag: str) -> list[str]:
    """All values given to ``flag`` in argv order."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_run_paths_live_under_instances_dir_with_log_beside_by_default():
    paths = run_paths("/run/corral", "web1")
    assert paths.pidfile == "/run/corral/instances/web1/qemu.pid"
    assert paths.qmp_socket == "/run/corral/instances/web1/qmp.sock"
    assert paths.console_socket == "/run/corral/instances/web1/console.sock"
    assert paths.console_log == "/run/corral/instances/web1/console.log"
    assert paths.ga_socket == "/run/corral/instances/web1/qga.sock"
    assert paths.instance_dir == "/run/corral/instances/web1"


def test_run_paths_put_console_log_in_persistent_log_dir():
    paths = run_paths("/run/corral", "web1", log_dir="/var/log/corral/console")
    assert paths.console_log == "/var/log/corral/console/web1.console.log"
    assert paths.pidfile == "/run/corral/instances/web1/qemu.pid"


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "-x", "a" * 64, "web 1"])
def test_run_paths_reject_names_that_could_escape_or_break_options(name):
    assert check_instance_name(name)
    with pytest.raises(SpecError):
        run_paths("/run/corral", name)


def test_default_argv_is_a_daemonized_identifiable_qemu():
    argv = build_argv(make_spec(), PATHS)
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-name") == ["guest=web1,process=corral-web1"]
    assert option(argv, "-uuid") == [UUID]
    assert "-daemonize" in argv and "-nodefaults" in argv
    assert option(argv, "-pidfile") == [PATHS.pidfile]
    assert option(argv, "-accel") == ["kvm"]
    assert option(argv, "-machine") == ["q35,graphics=off"]
    assert option(argv, "-cpu") == ["max"]
    assert option(argv, "-m") == ["512"]
    assert option(argv, "-smp") == ["2"]
    assert option(argv, "-display") == ["none"]
    assert "-vnc" not in argv and "-kernel" not in argv


def test_custom_binary_is_used():
    argv = build_argv(make_spec(), PATHS, qemu_binary="/opt/qemu/bin/qemu")
    assert argv[0] == "/opt/qemu/bin/qemu"


def test_qmp_is_a_unix_socket_server_that_does_not_wait():
    argv = build_argv(make_spec(), PATHS)
    chardevs = option(argv, "-chardev")
    assert f"socket,id=qmp,path={PATHS.qmp_socket},server=on,wait=off" in chardevs
    assert option(argv, "-mon") == ["chardev=qmp,mode=control"]


AGENT_DEVICES = ["virtio-serial-pci,id=ga-serial",
                 "virtserialport,bus=ga-serial.0,chardev=qga0,name=org.qemu.guest_agent.0"]


def test_guest_agent_on_adds_its_channel_as_the_last_device_and_off_none():
    argv = build_argv(make_spec(guest_agent=True), PATHS)
    assert f"socket,id=qga0,path={PATHS.ga_socket},server=on,wait=off" in option(argv, "-chardev")
    assert option(argv, "-device")[-2:] == AGENT_DEVICES  # after the root ports: no device before it moved
    plain = build_argv(make_spec(), PATHS)
    assert not any("qga0" in a or "ga-serial" in a for a in plain), "off (the default): no channel"


def test_the_guest_agent_channel_keeps_out_of_the_pc_machine_s_hot_plug_slots():
    """The PC machine hot-plugs into its first free slot: the controller takes the last one."""
    devices = option(build_argv(make_spec(machine="pc", guest_agent=True), PATHS), "-device")
    assert devices[-2:] == ["virtio-serial-pci,id=ga-serial,addr=0x1f", AGENT_DEVICES[1]]


def test_a_migration_target_gets_the_same_guest_agent_channel():
    incoming = dataclasses.replace(make_spec(guest_agent=True), incoming="tcp:10.1.2.3:49152")
    argv = build_argv(incoming, PATHS)
    assert argv[-2:] == ["-incoming", "tcp:10.1.2.3:49152"]
    assert option(argv, "-device")[-2:] == AGENT_DEVICES


def test_a_guest_agent_socket_path_too_long_for_a_unix_socket_is_refused():
    paths = run_paths("/" + "r" * 83, "web1")
    with pytest.raises(SpecError) as err:
        build_argv(make_spec(guest_agent=True), paths)
    assert any(p.startswith(f"guest agent socket path {paths.ga_socket!r} is longer") for p in err.value.problems)


def test_serial_console_is_a_logged_unix_socket():
    argv = build_argv(make_spec(), PATHS)
    assert (
        f"socket,id=serial0,path={PATHS.console_socket},server=on,wait=off,"
        f"logfile={PATHS.console_log},logappend=on"
    ) in option(argv, "-chardev")
    assert option(argv, "-serial") == ["chardev:serial0"]


def test_no_serial_console_when_disabled():
    argv = build_argv(make_spec(serial_console=False), PATHS)
    assert "-serial" not in argv
    assert all("serial0" not in c for c in option(argv, "-chardev"))


def test_guest_panic_is_reported_not_exited():
    argv = build_argv(make_spec(), PATHS)
    assert "pvpanic" in option(argv, "-device")
    assert option(argv, "-action") == ["panic=pause"]


def test_vnc_localhost_is_a_unix_socket_in_the_instance_directory_never_a_tcp_port():
    argv = build_argv(make_spec(vnc="localhost"), PATHS)
    assert option(argv, "-vnc") == ["unix:/run/corral/instances/web1/vnc.sock"]
    assert PATHS.vnc_socket == "/run/corral/instances/web1/vnc.sock"
    assert "VGA" in option(argv, "-device")
    assert option(argv, "-machine") == ["q35"]


def test_a_vnc_socket_path_too_long_for_a_unix_socket_is_refused():
    paths = run_paths("/run/" + "x" * 80, "web1")
    with pytest.raises(SpecError, match="VNC socket path"):
        build_argv(make_spec(vnc="localhost"), paths)


def test_kernel_boot_adds_serial_console_argument():
    argv = build_argv(make_spec(kernel_path="/boot/vmlinuz", initrd_path="/boot/initrd.img",
                                kernel_args="root=/dev/vda1 quiet"), PATHS)
    assert option(argv, "-kernel") == ["/boot/vmlinuz"]
    assert option(argv, "-initrd") == ["/boot/initrd.img"]
    assert option(argv, "-append") == ["root=/dev/vda1 quiet console=ttyS0"]


def test_kernel_args_keep_an_explicit_serial_console():
    argv = build_argv(make_spec(kernel_path="/boot/vmlinuz",
                                kernel_args="console=ttyS0,115200n8"), PATHS)
    assert option(argv, "-append") == ["console=ttyS0,115200n8"]


def test_kernel_without_serial_console_gets_args_unchanged():
    argv = build_argv(make_spec(kernel_path="/boot/vmlinuz", serial_console=False), PATHS)
    assert option(argv, "-kernel") == ["/boot/vmlinuz"]
    assert "-append" not in argv and "-initrd" not in argv


def test_virtio_disk_uses_cache_and_format_and_boots_first():
    argv = build_argv(make_spec(disk_cache="writeback"), PATHS)
    assert option(argv, "-drive") == [
        "file=/var/lib/corral/web1-0.qcow2,format=qcow2,if=none,id=disk0,"
        "cache=writeback,discard=unmap"
    ]
    assert "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=1" in option(argv, "-device")


def test_a_logical_volume_is_opened_as_a_block_device():
    spec = dataclasses.replace(make_spec(), disks=(DiskSpec("/dev/vg0/corral-web1-disk0", "raw",
                                                            protocol="host_device"),))
    assert option(build_argv(spec, PATHS), "-drive") == [
        "file=/dev/vg0/corral-web1-disk0,file.driver=host_device,format=raw,if=none,id=disk0,"
        "cache=none,discard=unmap"
    ]


def test_scsi_disks_and_cdrom_share_one_controller():
    spec = dataclasses.replace(
        make_spec(disk_bus="scsi", boot="cdrom"),
        disks=(DiskSpec("/d/a.raw", "raw"), DiskSpec("/d/install.iso", "raw", "cdrom")),
    )
    devices = option(build_argv(spec, PATHS), "-device")
    assert devices.count("virtio-scsi-pci,id=scsi0") == 1
    assert "scsi-cd,bus=scsi0.0,drive=cd0,id=cdrom0,bootindex=1" in devices
    assert "scsi-hd,bus=scsi0.0,drive=disk0,id=disk0-dev,bootindex=2" in devices


def test_ide_devices_get_their_own_bus_on_q35():
    spec = dataclasses.replace(
        make_spec(disk_bus="ide"),
        disks=(DiskSpec("/d/a.raw", "raw"), DiskSpec("/d/b.raw", "raw"),
               DiskSpec("/d/c.iso", "raw", "cdrom")),
    )
    devices = option(build_argv(spec, PATHS), "-device")
    assert "ide-hd,bus=ide.0,drive=disk0,id=disk0-dev,bootindex=1" in devices
    assert "ide-hd,bus=ide.1,drive=disk1,id=disk1-dev,bootindex=2" in devices
    assert "ide-cd,bus=ide.2,drive=cd0,id=cdrom0,bootindex=3" in devices


def test_ide_devices_use_master_and_slave_on_pc_machine():
    spec = dataclasses.replace(
        make_spec(disk_bus="ide", machine="pc"),
        disks=(DiskSpec("/d/a.raw", "raw"), DiskSpec("/d/b.raw", "raw"),
               DiskSpec("/d/c.raw", "raw")),
    )
    devices = option(build_argv(spec, PATHS), "-device")
    assert "ide-hd,bus=ide.0,unit=0,drive=disk0,id=disk0-dev,bootindex=1" in devices
    assert "ide-hd,bus=ide.0,unit=1,drive=disk1,id=disk1-dev,bootindex=2" in devices
    assert "ide-hd,bus=ide.1,unit=0,drive=disk2,id=disk2-dev,bootindex=3" in devices


def test_cdrom_is_read_only_ide_when_disks_are_virtio():
    spec = dataclasses.replace(make_spec(), disks=(DiskSpec("/d/c.iso", "raw", "cdrom"),))
    argv = build_argv(spec, PATHS)
    assert option(argv, "-drive") == [
        "file=/d/c.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on"
    ]
    assert "ide-cd,bus=ide.0,drive=cd0,id=cdrom0,bootindex=1" in option(argv, "-device")


def test_an_empty_cdrom_drive_has_no_medium_so_one_can_be_inserted_live():
    spec = dataclasses.replace(make_spec(boot="cdrom"), disks=(DiskSpec("/d/a.raw", "raw"), DiskSpec("", "raw", "cdrom")))
    argv = build_argv(spec, PATHS)
    assert "if=none,id=cd0,media=cdrom,readonly=on" in option(argv, "-drive")
    assert "ide-cd,bus=ide.0,drive=cd0,id=cdrom0,bootindex=1" in option(argv, "-device")


def test_only_a_cdrom_may_have_no_path():
    spec = dataclasses.replace(make_spec(), disks=(DiskSpec("", "raw"),))
    with pytest.raises(SpecError, match="must be absolute"):
        build_argv(spec, PATHS)


def test_vnc_tcp_listens_on_the_node_address_with_a_password_never_on_the_command_line():
    spec = dataclasses.replace(make_spec(vnc="tcp"), vnc_host="192.0.2.11", vnc_password="s3cret99")
    argv = build_argv(spec, PATHS)
    assert option(argv, "-vnc") == ["192.0.2.11:0,to=999,password=on"]
    assert not any("s3cret99" in a for a in argv) and "s3cret99" not in repr(spec)
    v6 = dataclasses.replace(spec, vnc_host="2001:db8::1")
    assert option(build_argv(v6, PATHS), "-vnc") == ["[2001:db8::1]:0,to=999,password=on"]


def test_vnc_tcp_without_the_node_address_is_refused():
    with pytest.raises(SpecError, match="vnc=tcp needs the node's IP address"):
        build_argv(make_spec(vnc="tcp"), PATHS)


def test_too_many_ide_devices_are_rejected():
    spec = dataclasses.replace(
        make_spec(disk_bus="ide", machine="pc"),
        disks=tuple(DiskSpec(f"/d/{i}.raw", "raw") for i in range(5)),
    )
    with pytest.raises(SpecError, match="exceed the 4"):
        build_argv(spec, PATHS)


def test_user_nic_uses_model_and_mac():
    argv = build_argv(make_spec(nic_model="e1000"), PATHS)
    assert option(argv, "-netdev") == ["user,id=net0"]
    assert "e1000,netdev=net0,id=net0-dev,mac=52:54:00:12:34:56,bootindex=2" in option(argv, "-device")


def test_bridged_nic_uses_prepared_tap_without_scripts():
    spec = dataclasses.replace(
        make_spec(nic_model="rtl8139"),
        nics=(NicSpec("52:54:00:12:34:56", "bridged", "crl0a1b2c3dn0"),),
    )
    argv = build_argv(spec, PATHS)
    assert option(argv, "-netdev") == [
        "tap,id=net0,ifname=crl0a1b2c3dn0,script=no,downscript=no"
    ]
    assert "rtl8139,netdev=net0,id=net0-dev,mac=52:54:00:12:34:56,bootindex=2" in option(argv, "-device")


def test_network_boot_puts_nics_first():
    spec = dataclasses.replace(
        make_spec(boot="network"),
        nics=(NicSpec("52:54:00:00:00:01", "user"), NicSpec("52:54:00:00:00:02", "user")),
    )
    devices = option(build_argv(spec, PATHS), "-device")
    assert "virtio-net-pci,netdev=net0,id=net0-dev,mac=52:54:00:00:00:01,bootindex=1" in devices
    assert "virtio-net-pci,netdev=net1,id=net1-dev,mac=52:54:00:00:00:02,bootindex=2" in devices
    assert "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=3" in devices


def test_commas_in_paths_are_escaped_for_qemu_options():
    spec = dataclasses.replace(make_spec(), disks=(DiskSpec("/d/a,b.raw", "raw"),))
    paths = run_paths("/run/cor,ral", "web1")
    argv = build_argv(spec, paths)
    assert option(argv, "-drive")[0].startswith("file=/d/a,,b.raw,")
    assert "socket,id=qmp,path=/run/cor,,ral/instances/web1/qmp.sock,server=on,wait=off" in (
        option(argv, "-chardev")
    )
    assert option(argv, "-pidfile") == ["/run/cor,ral/instances/web1/qemu.pid"]


def test_every_spec_problem_is_reported_at_once():
    spec = InstanceSpec(
        name="web1", uuid="not-a-uuid", memory_mib=4, vcpus=0, hv=HvParams(),
        disks=(DiskSpec("relative.img", "vmdk"),),
        nics=(NicSpec("52:54:00:12:34", "bridged"), NicSpec("52:54:00:12:34:57", "macvtap")),
    )
    with pytest.raises(SpecError) as err:
        build_argv(spec, PATHS)
    problems = err.value.problems
    assert any("not a UUID" in p for p in problems)
    assert any("memory_mib 4" in p for p in problems)
    assert any("vcpus 0" in p for p in problems)
    assert any("format 'vmdk' is not one of raw, qcow2" in p for p in problems)
    assert any("must be absolute" in p for p in problems)
    assert any("nic 0: mac" in p for p in problems)
    assert any("nic 0: bridged mode needs a tap" in p for p in problems)
    assert any("nic 1: mode 'macvtap'" in p for p in problems)


def test_socket_path_too_long_for_unix_sockets_is_rejected():
    paths = run_paths("/" + "r" * 100, "web1")
    with pytest.raises(SpecError, match="use a shorter run directory"):
        build_argv(make_spec(), paths)


def test_incoming_uri_makes_qemu_wait_for_a_migration_and_is_absent_otherwise():
    incoming = dataclasses.replace(make_spec(guest_agent=True), incoming="tcp:10.1.2.3:49152")
    assert build_argv(incoming, PATHS)[-2:] == ["-incoming", "tcp:10.1.2.3:49152"]
    assert "-incoming" not in build_argv(make_spec(), PATHS)


def test_an_incoming_migration_over_tls_accepts_only_the_named_client():
    spec = dataclasses.replace(make_spec(), incoming="tcp:10.1.2.3:49152", incoming_tls_dir="/run/tls",
                               incoming_client="CN=n1,OU=corral-node")
    argv = build_argv(spec, PATHS)
    assert argv[-2:] == ["-incoming", "tcp:10.1.2.3:49152"]
    assert "tls-creds-x509,id=migration-tls,dir=/run/tls,endpoint=server,verify-peer=on" in argv
    assert "authz-simple,id=migration-authz,identity=CN=n1,,OU=corral-node" in argv  # ',,' escapes the comma
    assert "migration.tls-creds=migration-tls" in argv and "migration.tls-authz=migration-authz" in argv


def test_a_replicated_disk_sits_on_a_quorum_of_its_image_and_a_sink_and_pauses_on_write_errors():
    hv = HvParams(disk_cache="writethrough")
    spec = InstanceSpec(name="db1", uuid="00000000-0000-4000-8000-000000000001", memory_mib=128, vcpus=1,
                        hv=hv, disks=(DiskSpec("/d/db1-0.raw", "raw", replicated=True, size_bytes=2**27),),
                        nics=())
    argv = build_argv(spec, run_paths("/run/corral", "db1"))
    blockdevs = option(argv, "-blockdev")
    assert blockdevs == [
        "driver=file,filename=/d/db1-0.raw,node-name=disk0-file,cache.direct=off,cache.no-flush=off,discard=unmap",
        "driver=raw,file=disk0-file,node-name=disk0-local,cache.direct=off,cache.no-flush=off,discard=unmap",
        f"driver=null-co,size={2**27},node-name=disk0-sink",
        "driver=quorum,node-name=disk0,vote-threshold=2,read-pattern=fifo,children.0=disk0-local,"
        "children.1=disk0-sink",
    ]
    assert "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=1,write-cache=off,werror=stop,rerror=stop" in option(argv, "-device")
    assert "socket,id=guard,path=/run/corral/instances/db1/guard.sock,server=on,wait=off" in option(argv, "-chardev")
    assert option(argv, "-drive") == []
