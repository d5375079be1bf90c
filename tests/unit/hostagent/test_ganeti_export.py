"""Ganeti exports read and mapped to `instance add` (hostagent.master.decide.ganeti_export).

The config.ini texts follow what Ganeti 3.0 writes (ganeti/ganeti lib/backend.py
FinalizeExport through Python's configparser: "key = value", sections export,
instance, hypervisor, backend, os, os_private; absent values as "None"; the
parameter sections filled with the cluster's defaults, here Ganeti 3.0.2's KVM
defaults from src/Ganeti/Constants.hs, except where the instance changed them).
"""

import random

import pytest

from hostagent.errors import BadRequest
from hostagent.master.decide.checks import ClusterView, check_add
from hostagent.master.decide.ganeti_export import read_config, to_add_request

KVM_DEFAULTS = """\
acpi = True
boot_order = disk
cdrom2_image_path = 
cdrom_disk_type = 
cdrom_image_path = 
cpu_cores = 0
cpu_mask = all
cpu_sockets = 0
cpu_threads = 0
cpu_type = 
disk_aio = threads
disk_cache = default
disk_discard = ignore
disk_type = paravirtual
floppy_image_path = 
initrd_path = 
kernel_args = ro
kernel_path = /boot/vmlinuz-3-kvmU
keymap = 
kvm_extra = 
kvm_flag = 
kvm_path = /usr/bin/kvm
kvm_pci_reservations = 12
machine_version = 
mem_path = 
migration_caps = 
migration_downtime = 30
nic_type = paravirtual
reboot_behavior = reboot
root_path = /dev/vda1
scsi_controller_type = lsi
security_domain = 
security_model = none
serial_console = True
serial_speed = 38400
soundhw = 
spice_bind = 
spice_image_compression = 
spice_ip_version = 0
spice_jpeg_wan_compression = 
spice_password_file = 
spice_playback_compression = True
spice_streaming_video = 
spice_tls_ciphers = HIGH:-DES:-3DES:-EXPORT:-DH
spice_use_tls = False
spice_use_vdagent = True
spice_zlib_glz_wan_compression = 
usb_devices = 
usb_mouse = 
use_chroot = False
use_guest_agent = False
use_localtime = False
user_shutdown = False
vga = 
vhost_net = True
virtio_net_queues = 1
vnc_bind_address = 
vnc_password_file = 
vnc_tls = False
vnc_x509_path = 
vnc_x509_verify = False
vnet_hdr = True
"""

# A drbd instance with two NICs and two disks, exported while stopped (so its own template is written),
# booting from its disk, with a few parameters changed from the cluster's defaults.
HYPERVISOR = (KVM_DEFAULTS.replace("kernel_path = /boot/vmlinuz-3-kvmU", "kernel_path = ")
              .replace("disk_cache = default", "disk_cache = none").replace("cpu_type = \n", "cpu_type = host\n")
              .replace("usb_mouse = \n", "usb_mouse = tablet\n")
              .replace("vnc_bind_address = \n", "vnc_bind_address = 0.0.0.0\n"))
FULL = f"""\
[export]
version = 0
timestamp = 1714557901
source = node1.example.com
os = debootstrap+default
compression = none

[instance]
name = web1.example.com
maxmem = 2048
minmem = 1024
memory = 2048
vcpus = 2
disk_template = drbd
hypervisor = kvm
tags = project:web backup
nic0_mac = aa:00:00:3e:1f:01
nic0_ip = None
nic0_network = None
nic0_name = None
nic0_link = br0
nic0_mode = bridged
nic0_vlan = .20
nic1_mac = AA:00:00:3e:1f:02
nic1_ip = 10.1.0.5
nic1_network = None
nic1_name = backend
nic1_link = 100
nic1_mode = routed
nic1_vlan = 
nic_count = 2
disk0_ivname = disk/0
disk0_dump = 4f6e0b0a-7f1e-4c5a-9a39-6a3b7f0c2d11
disk0_size = 10240
disk0_name = None
disk1_ivname = disk/1
disk1_dump = 9d1c3e55-2b7a-4d0e-8f3b-1c2d3e4f5a6b
disk1_size = 51200
disk1_name = data
disk_count = 2

[hypervisor]
{HYPERVISOR}
[backend]
always_failover = False
auto_balance = True
maxmem = 2048
minmem = 1024
spindle_use = 2
vcpus = 2

[os]
filesystem = ext4

[os_private]
root_password = s3cret-never-shown

"""


def one_disk(**changes: str) -> str:
    """A small stopped plain instance's export, with [instance] values changed."""
    values = {"name": "db1", "os": "noop", "hypervisor": "kvm", "disk_template": "plain", "disk_count": "1",
              "disk0_size": "1024", "nic0_mac": "aa:00:00:00:00:01", "nic0_ip": "None", "hypervisor_section": ""}
    values.update(changes)
    return f"""\
[export]
version = 0
timestamp = 1714557901
source = node2.example.com
os = {values['os']}
compression = none

[instance]
name = {values['name']}
maxmem = 512
minmem = 512
memory = 512
vcpus = 1
disk_template = {values['disk_template']}
hypervisor = {values['hypervisor']}
tags = 
nic0_mac = {values['nic0_mac']}
nic0_ip = {values['nic0_ip']}
nic0_network = None
nic0_name = None
nic0_link = br0
nic0_mode = bridged
nic0_vlan = 
nic_count = 1
disk0_ivname = disk/0
disk0_dump = 1b2c3d4e-0000-4000-8000-000000000001
disk0_size = {values['disk0_size']}
disk0_name = None
disk_count = {values['disk_count']}

[hypervisor]
{values['hypervisor_section']}
[backend]

[os]

[os_private]

"""


def test_a_full_kvm_export_is_read_as_ganeti_wrote_it():
    export = read_config(FULL)
    assert (export.name, export.os, export.os_variant, export.source_node, export.timestamp) == (
        "web1.example.com", "debootstrap", "default", "node1.example.com", 1714557901)
    assert (export.memory_mib, export.minmem_mib, export.vcpus, export.disk_template) == (2048, 1024, 2, "drbd")
    assert [(d.index, d.dump, d.size_mib, d.name) for d in export.disks] == [
        (0, "4f6e0b0a-7f1e-4c5a-9a39-6a3b7f0c2d11", 10240, ""),
        (1, "9d1c3e55-2b7a-4d0e-8f3b-1c2d3e4f5a6b", 51200, "data")]
    assert [(n.mac, n.ip, n.mode, n.link, n.vlan, n.name) for n in export.nics] == [
        ("aa:00:00:3e:1f:01", "", "bridged", "br0", ".20", ""),
        ("aa:00:00:3e:1f:02", "10.1.0.5", "routed", "100", "", "backend")]
    assert export.tags == ("project:web", "backup")
    assert export.osparams == {"filesystem": "ext4"}
    assert export.os_private_names == ("root_password",)
    assert "s3cret" not in repr(export)


def test_a_full_kvm_export_maps_to_an_add_request_and_lists_what_it_could_not_map():
    request, notes = to_add_request(read_config(FULL), name="web1", node=None, template=None)
    assert request == {
        "name": "web1", "os": "debootstrap+default", "osparams": {"filesystem": "ext4"}, "disk_template": "drbd",
        "memory": 2048, "vcpus": 2, "disks": [{"size": 10240, "format": "raw"}, {"size": 51200, "format": "raw"}],
        "nics": [{"mac": "aa:00:00:3e:1f:01", "mode": "bridged", "bridge": "br0", "vlan": 20},
                 {"mac": "aa:00:00:3e:1f:02", "mode": "user"}],
        "hvparams": {"serial_console": True, "boot": "disk", "disk_bus": "virtio", "nic_model": "virtio",
                     "disk_cache": "none", "cpu_model": "host", "vnc": "tcp"},
        "tags": ["project:web", "backup"]}
    assert notes == [
        "private OS parameter root_password: not imported (Corral has no private OS parameters; "
        "give it with --os-param if the OS needs it)",
        "minmem 1024 MiB: Corral does not balloon; the instance gets its maxmem, 2048 MiB",
        "Ganeti backend parameter spindle_use = '2': Corral has no such setting; not imported",
        "nic 1 (mac aa:00:00:3e:1f:02): address 10.1.0.5 not imported: Corral gives addresses only from a network",
        "nic 1 (mac aa:00:00:3e:1f:02): Ganeti mode 'routed' on '100' has no Corral equivalent: imported as a "
        "user-mode NIC (`corral instance modify --net`)",
        "nic 1 (mac aa:00:00:3e:1f:02): its name 'backend' is not kept (Corral's NICs have no names)",
        "Ganeti hvparam machine_version = '': empty (QEMU's default machine, pc); Corral's default machine applies",
        "Ganeti hvparam usb_mouse = 'tablet': Corral has no such setting; not imported",
        "disk 1: its name 'data' is not kept (Corral's disks have no names)"]
    assert not any("s3cret" in n for n in notes)


def test_the_mapped_request_passes_corrals_own_add_checks():
    request, _ = to_add_request(read_config(FULL), name="web1", node="n1", template="file")
    report = {"node": "n1", "time": 0.0, "memory_total_mib": 8192, "memory_free_mib": 6000,
              "disk_free_mib": 200_000, "os": {"debootstrap": "ganeti"}}
    view = ClusterView(cluster_hv={}, nodes={"n1": {"name": "n1", "address": "127.0.0.1"}},
                       reports={"n1": report}, instances=set(), used_macs=set())
    inst = check_add(request, view, now=0.0, rng=random.Random(1))
    assert (inst.os, inst.memory_mib, [d.size_mib for d in inst.disks]) == ("debootstrap+default", 2048,
                                                                             [10240, 51200])
    assert [(n.mac, n.mode, n.bridge, n.vlan) for n in inst.nics] == [
        ("aa:00:00:3e:1f:01", "bridged", "br0", 20), ("aa:00:00:3e:1f:02", "user", "", None)]


def test_a_xen_export_is_refused_naming_the_hypervisor():
    with pytest.raises(BadRequest) as err:
        read_config(one_disk(name="mail1", hypervisor="xen-pvm"))
    assert str(err.value) == "Ganeti export of instance mail1 uses the xen-pvm hypervisor; Corral runs only kvm"


def test_a_config_without_an_instance_section_is_refused():
    text = "[export]\nversion = 0\nos = noop\ncompression = none\n\n[hypervisor]\nacpi = True\n"
    with pytest.raises(BadRequest) as err:
        read_config(text)
    assert str(err.value) == "config.ini has no [instance] section: not a Ganeti export"


def test_text_that_is_not_ini_is_refused():
    with pytest.raises(BadRequest) as err:
        read_config("#!/bin/sh\nexit 0\n")
    assert str(err.value).startswith("config.ini is not an INI file (File contains no section headers.")


def test_another_export_version_is_refused():
    with pytest.raises(BadRequest, match=r"db1 has version '1'; Corral reads version 0"):
        read_config(one_disk().replace("version = 0", "version = 1"))


def test_missing_keys_are_named_together():
    text = one_disk().replace("vcpus = 1\n", "").replace("disk_count = 1\n", "").replace("maxmem = 512\n", "")
    with pytest.raises(BadRequest) as err:
        read_config(text.replace("memory = 512\n", ""))
    assert str(err.value) == ("config.ini lacks [instance] vcpus, [instance] disk_count, [instance] maxmem "
                              "(or memory): not a complete Ganeti export")


def test_a_disk_count_that_disagrees_with_the_disk_entries_is_refused():
    with pytest.raises(BadRequest) as err:
        read_config(one_disk(disk_count="2"))
    assert str(err.value) == ("Ganeti export of instance db1: disk_count is 2 but there are entries for disk 0: "
                              "the export is incomplete (a disk that failed to export leaves a gap); "
                              "export the instance again")


def test_a_bad_mac_and_a_bad_size_are_refused_together():
    with pytest.raises(BadRequest) as err:
        read_config(one_disk(nic0_mac="aa:00:00:zz:00:01", disk0_size="10G"))
    assert str(err.value) == (
        "Ganeti export of instance db1: [instance] disk0_size: '10G' is not a whole number of MiB (at least 1); "
        "[instance] nic0_mac: 'aa:00:00:zz:00:01' is not a MAC address (e.g. aa:00:00:12:34:56)")


def test_a_dump_that_is_a_path_is_refused():
    text = one_disk().replace("disk0_dump = 1b2c3d4e-0000-4000-8000-000000000001", "disk0_dump = ../../etc/shadow")
    with pytest.raises(BadRequest, match=r"disk0_dump: '../../etc/shadow' is not a file name in the export"):
        read_config(text)


def test_an_os_variant_is_split_from_the_os_name_and_joined_again_in_the_request():
    export = read_config(one_disk(os="debootstrap+bookworm"))
    assert (export.os, export.os_variant) == ("debootstrap", "bookworm")
    assert to_add_request(export)[0]["os"] == "debootstrap+bookworm"
    plain = read_config(one_disk(os="noop"))
    assert (plain.os, plain.os_variant) == ("noop", "")
    assert to_add_request(plain)[0]["os"] == "noop"


def test_a_template_corral_lacks_is_refused_unless_one_is_chosen():
    export = read_config(one_disk(disk_template="rbd"))
    with pytest.raises(BadRequest) as err:
        to_add_request(export)
    assert str(err.value) == ("Ganeti export of instance db1 has disk template 'rbd', which Corral does not have "
                              "(it has file, mirror, plain, drbd): choose one with --template")
    assert to_add_request(export, template="mirror")[0]["disk_template"] == "mirror"
    with pytest.raises(BadRequest, match=r"disk template 'lvm' is not one of file, mirror, plain, drbd"):
        to_add_request(export, template="lvm")


def test_a_ganeti_name_corral_does_not_take_needs_a_new_one():
    with pytest.raises(BadRequest, match=r"'DB_1' is not a Corral instance name .*give another with --name"):
        to_add_request(read_config(one_disk(name="DB_1")))
    assert to_add_request(read_config(one_disk(name="DB_1")), name="db1", node="n2")[0]["node"] == "n2"


def test_a_directly_booted_kernel_keeps_its_root_arguments_and_console_speed():
    hv = "kernel_path = /boot/vmlinuz-6.1\ninitrd_path = /boot/initrd.img-6.1\nkernel_args = ro quiet\n" \
         "root_path = /dev/vda1\nserial_console = True\nserial_speed = 115200\nkvm_flag = disabled\n" \
         "boot_order = floppy\nnic_type = ne2k_pci\n"
    request, notes = to_add_request(read_config(one_disk(hypervisor_section=hv)))
    assert request["hvparams"] == {"serial_console": True, "accel": "tcg", "kernel_path": "/boot/vmlinuz-6.1",
                                   "initrd_path": "/boot/initrd.img-6.1",
                                   "kernel_args": "root=/dev/vda1 ro quiet console=ttyS0,115200"}
    assert notes == [
        "Ganeti hvparam boot_order = 'floppy': Corral's boot takes only the equivalents of disk, cdrom, network; "
        "not imported",
        "Ganeti hvparam nic_type = 'ne2k_pci': Corral's nic_model takes only the equivalents of paravirtual, "
        "e1000, rtl8139; not imported"]


def test_the_guest_agent_ganeti_used_is_asked_for_again():
    request, notes = to_add_request(read_config(one_disk(hypervisor_section="use_guest_agent = True\n")))
    assert request["hvparams"] == {"guest_agent": True} and notes == []


def test_a_nic_on_a_ganeti_network_maps_only_to_a_named_corral_network():
    text = one_disk(nic0_ip="10.0.0.7").replace("nic0_network = None", "nic0_network = 5f1d2c3b-aaaa-bbbb-cccc-1")
    export = read_config(text)
    request, notes = to_add_request(export, networks={"5f1d2c3b-aaaa-bbbb-cccc-1": "lan"})
    assert (request["nics"], notes) == ([{"mac": "aa:00:00:00:00:01", "network": "lan", "ip": "10.0.0.7"}], [])
    request, notes = to_add_request(export)
    assert request["nics"] == [{"mac": "aa:00:00:00:00:01", "mode": "bridged", "bridge": "br0"}]
    assert notes == ["nic 0 (mac aa:00:00:00:00:01): Ganeti network '5f1d2c3b-aaaa-bbbb-cccc-1' and its address "
                     "10.0.0.7 not imported: name the Corral network it becomes, or add one later "
                     "(`corral instance modify --net`)"]
