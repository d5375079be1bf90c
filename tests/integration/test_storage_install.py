"""OS installation onto file disks: real OS scripts, real qemu-img."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from storage.base import MIB
from storage.errors import (
    DiskExists,
    OsParametersInvalid,
    OsScriptFailed,
    OsScriptTimeout,
    UnknownOsParameters,
)
from storage.filedisk import FileTemplate
from storage.install import DiskSpec, install_os
from storage.osdef import NicEnv, OsDefinition, OsImage, discover, lookup, verify_parameters

pytestmark = pytest.mark.integration

MARKER = b"CORRAL-MARKER"

RECORDING_CREATE = """#!/bin/sh
env > "{env_file}"
pwd > "{env_file}.cwd"
printf 'CORRAL-MARKER' 1<>"$DISK_0_PATH"
"""
FAILING_CREATE = """#!/bin/sh
i=1
while [ $i -le 30 ]; do echo "step $i"; i=$((i + 1)); done
echo "mkfs: disk full, giving up" >&2
exit 3
"""
HANGING_CREATE = """#!/bin/sh
echo "waiting for a mirror that never answers"
exec sleep 60
"""
VERIFY = """#!/bin/sh
[ "$1" = parameters ] || { echo "usage: verify parameters" >&2; exit 2; }
case "$OSP_FILESYSTEM" in
  ""|ext3|ext4) exit 0 ;;
  *) echo "filesystem must be ext3 or ext4, not $OSP_FILESYSTEM" >&2; exit 1 ;;
esac
"""


def make_os(root: Path, name: str, create: str, *, variants: str = "") -> OsDefinition:
    os_dir = root / name
    os_dir.mkdir(parents=True)
    (os_dir / "ganeti_api_version").write_text("20\n")
    (os_dir / "parameters.list").write_text("filesystem Root file system type\n")
    (os_dir / "variants.list").write_text(variants)
    scripts = {"create": create, "verify": VERIFY}
    for name_ in ("create", "export", "import", "rename", "verify"):
        path = os_dir / name_
        path.write_text(scripts.get(name_, "#!/bin/sh\nexit 0\n"))
        path.chmod(0o755)
    entry = lookup(discover([str(root)], []), name)
    assert isinstance(entry, OsDefinition)
    return entry


def read_head(path: str, fmt: str, tmp_path: Path, count: int = len(MARKER)) -> bytes:
    raw = path
    if fmt != "raw":
        raw = str(tmp_path / "readback.raw")
        subprocess.run(
            ["qemu-img", "convert", "-f", fmt, "-O", "raw", path, raw], check=True, timeout=60
        )
    with open(raw, "rb") as f:
        return f.read(count)


def read_env(env_file: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines())


@pytest.fixture
def template(tmp_path: Path) -> FileTemplate:
    return FileTemplate(str(tmp_path / "file-storage"))


async def test_script_os_fills_disk_0_and_gets_the_api_20_environment(
    template: FileTemplate, tmp_path: Path
) -> None:
    env_file = tmp_path / "create.env"
    osdef = make_os(
        tmp_path / "os", "testos", RECORDING_CREATE.format(env_file=env_file),
        variants="stable\nedge\n",
    )

    paths = await install_os(
        osdef,
        template,
        instance_name="web1",
        instance_uuid="11111111-2222",
        disks=[DiskSpec(32, "raw", uuid="disk-uuid-0", name="root"), (16, "raw")],
        primary_node="node1",
        secondary_nodes=["node2"],
        hvparams={"serial_console": "True"},
        beparams={"memory": "256"},
        nics=[NicEnv("aa:00:00:00:00:01", "bridged", "br0")],
        variant="edge",
        osparams={"filesystem": "ext4"},
        log_dir=str(tmp_path / "logs"),
        timeout_s=30,
    )

    assert paths == [template.path("web1", 0, "raw"), template.path("web1", 1, "raw")]
    assert read_head(paths[0], "raw", tmp_path) == MARKER
    env = read_env(env_file)
    expected = {
        "OS_API_VERSION": "20",
        "OS_NAME": "testos",
        "OS_VARIANT": "edge",
        "OSP_FILESYSTEM": "ext4",
        "DEBUG_LEVEL": "0",
        "INSTANCE_NAME": "web1",
        "INSTANCE_OS": "testos+edge",
        "INSTANCE_UUID": "11111111-2222",
        "INSTANCE_PRIMARY_NODE": "node1",
        "INSTANCE_SECONDARY_NODES": "node2",
        "INSTANCE_HV_serial_console": "True",
        "INSTANCE_BE_memory": "256",
        "HYPERVISOR": "kvm",
        "DISK_COUNT": "2",
        "DISK_0_PATH": paths[0],
        "DISK_0_SIZE": "32",
        "DISK_0_ACCESS": "rw",
        "DISK_0_UUID": "disk-uuid-0",
        "DISK_0_NAME": "root",
        "DISK_0_BACKEND_TYPE": "file:loop",
        "DISK_1_PATH": paths[1],
        "DISK_1_SIZE": "16",
        "NIC_COUNT": "1",
        "NIC_0_MAC": "aa:00:00:00:00:01",
        "NIC_0_BRIDGE": "br0",
        "PATH": "/sbin:/bin:/usr/sbin:/usr/bin",
    }
    assert {k: env.get(k) for k in expected} == expected
    assert "HOME" not in env and "INSTANCE_REINSTALL" not in env
    assert Path(f"{env_file}.cwd").read_text().strip() == osdef.path
    logs = os.listdir(tmp_path / "logs")
    assert len(logs) == 1 and logs[0].startswith("add-testos-web1-")


async def test_failing_create_leaves_nothing_and_reports_the_log_tail(
    template: FileTemplate, tmp_path: Path
) -> None:
    osdef = make_os(tmp_path / "os", "bados", FAILING_CREATE)

    with pytest.raises(OsScriptFailed) as exc:
        await install_os(
            osdef, template, instance_name="web1", instance_uuid="u",
            disks=[(16, "raw"), (8, "qcow2")],
            primary_node="node1", log_dir=str(tmp_path / "logs"), timeout_s=30,
        )

    assert exc.value.rc == 3
    assert len(exc.value.log_tail) == 20
    assert exc.value.log_tail[-1] == "mkfs: disk full, giving up"
    assert exc.value.log_tail[0] == "step 12"
    assert os.path.isfile(exc.value.log_path)
    assert "mkfs: disk full, giving up" in str(exc.value)
    assert not os.path.exists(template.instance_dir("web1"))


async def test_hanging_create_is_killed_and_leaves_nothing(
    template: FileTemplate, tmp_path: Path
) -> None:
    osdef = make_os(tmp_path / "os", "slowos", HANGING_CREATE)

    with pytest.raises(OsScriptTimeout) as exc:
        await install_os(
            osdef, template, instance_name="web1", instance_uuid="u", disks=[(16, "raw")],
            primary_node="node1", log_dir=str(tmp_path / "logs"), timeout_s=1,
        )

    assert exc.value.log_tail == ["waiting for a mirror that never answers"]
    assert not os.path.exists(template.instance_dir("web1"))


async def test_qcow2_disks_are_installed_through_a_raw_scratch_file(
    template: FileTemplate, tmp_path: Path
) -> None:
    env_file = tmp_path / "create.env"
    osdef = make_os(tmp_path / "os", "testos", RECORDING_CREATE.format(env_file=env_file))

    paths = await install_os(
        osdef, template, instance_name="web1", instance_uuid="u", disks=[(64, "qcow2"), (8, "raw")],
        primary_node="node1", log_dir=str(tmp_path / "logs"), timeout_s=30,
    )

    assert paths == [template.path("web1", 0, "qcow2"), template.path("web1", 1, "raw")]
    env = read_env(env_file)
    assert env["DISK_0_PATH"] == template.scratch_path("web1", 0)
    assert env["DISK_1_PATH"] == paths[1]
    assert read_head(paths[0], "qcow2", tmp_path) == MARKER
    assert await template.size_mib("web1", 0) == 64
    assert sorted(os.listdir(template.instance_dir("web1"))) == ["disk0.qcow2", "disk1.raw"]


async def test_image_is_cloned_into_disk_0(template: FileTemplate, tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    with open(source, "wb") as f:
        f.truncate(16 * MIB)
        f.write(MARKER)
    image = tmp_path / "images" / "tiny.qcow2"
    image.parent.mkdir()
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(source), str(image)],
        check=True, timeout=60,
    )
    entry = lookup(discover([], [str(image.parent)]), "tiny")
    assert isinstance(entry, OsImage)

    paths = await install_os(
        entry, template, instance_name="web1", instance_uuid="u", disks=[(32, "qcow2"), (8, "raw")],
        primary_node="node1", log_dir=str(tmp_path / "logs"), timeout_s=30,
    )

    assert read_head(paths[0], "qcow2", tmp_path) == MARKER
    assert await template.size_mib("web1", 0) == 32
    assert await template.size_mib("web1", 1) == 8
    assert not os.path.exists(tmp_path / "logs")


async def test_invalid_parameters_are_refused_before_any_disk_exists(
    template: FileTemplate, tmp_path: Path
) -> None:
    osdef = make_os(tmp_path / "os", "testos", "#!/bin/sh\nexit 0\n")

    with pytest.raises(OsParametersInvalid) as exc:
        await install_os(
            osdef, template, instance_name="web1", instance_uuid="u", disks=[(16, "raw")],
            primary_node="node1", osparams={"filesystem": "xfs"},
            log_dir=str(tmp_path / "logs"), timeout_s=30,
        )

    assert "filesystem must be ext3 or ext4, not xfs" in exc.value.output
    assert not os.path.exists(template.instance_dir("web1"))


async def test_parameters_missing_from_parameters_list_are_refused_without_running_verify(
    tmp_path: Path,
) -> None:
    osdef = make_os(tmp_path / "os", "testos", "#!/bin/sh\nexit 0\n")
    os.chmod(osdef.script("verify"), 0o644)  # running it now would fail to start

    with pytest.raises(UnknownOsParameters) as exc:
        await verify_parameters(osdef, {"filesystem": "ext4", "swap-size": "1024"})

    assert exc.value.unknown == ["swap-size"]
    assert "it accepts: filesystem" in str(exc.value)


async def test_valid_parameters_pass_verify(tmp_path: Path) -> None:
    osdef = make_os(tmp_path / "os", "testos", "#!/bin/sh\nexit 0\n")

    await verify_parameters(osdef, {"filesystem": "ext3"})


async def test_install_refuses_an_instance_whose_disk_already_exists(
    template: FileTemplate, tmp_path: Path
) -> None:
    osdef = make_os(tmp_path / "os", "testos", "#!/bin/sh\nexit 0\n")
    existing = await template.create("web1", 1, 8, "raw")

    with pytest.raises(DiskExists):
        await install_os(
            osdef, template, instance_name="web1", instance_uuid="u",
            disks=[(16, "raw"), (8, "raw")],
            primary_node="node1", log_dir=str(tmp_path / "logs"), timeout_s=30,
        )

    assert os.listdir(template.instance_dir("web1")) == [os.path.basename(existing)]
