"""OS definition discovery, lookup and script environment (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.osdef import (
    DiskEnv,
    NicEnv,
    OsDefinition,
    OsImage,
    UnknownOs,
    UnknownVariant,
    discover,
    lookup,
    os_environment,
    run_export,
    run_import,
    split_os_name,
)

SCRIPTS = ("create", "export", "import", "rename", "verify")
QCOW2_HEADER = b"QFI\xfb\x00\x00\x00\x03" + b"\x00" * 64


def make_os(
    root: Path,
    name: str,
    *,
    api: str | None = "20\n",
    scripts: tuple[str, ...] = SCRIPTS,
    executable: bool = True,
    parameters: str | None = "filesystem Root file system (ext4 or ext3)\n",
    variants: str | None = None,
) -> Path:
    os_dir = root / name
    os_dir.mkdir(parents=True)
    if api is not None:
        (os_dir / "ganeti_api_version").write_text(api)
    for script in scripts:
        path = os_dir / script
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755 if executable else 0o644)
    if parameters is not None:
        (os_dir / "parameters.list").write_text(parameters)
    if variants is not None:
        (os_dir / "variants.list").write_text(variants)
    return os_dir


def make_image(root: Path, name: str, header: bytes = QCOW2_HEADER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.qcow2"
    path.write_bytes(header)
    return path


def test_discover_reads_versions_variants_and_parameters(tmp_path: Path) -> None:
    os_dir = make_os(
        tmp_path / "os",
        "debian",
        api="20\n15\n10\n",
        parameters="filesystem\tRoot file system\nswap-size Swap in MiB\n",
        variants="bookworm\n\nbullseye\n",
    )

    catalog = discover([str(tmp_path / "os")], [])

    assert catalog.problems == []
    assert catalog.entries == {
        "debian": OsDefinition(
            name="debian",
            path=str(os_dir),
            api_versions=(20, 15, 10),
            variants=("bookworm", "bullseye"),
            parameters=(("filesystem", "Root file system"), ("swap-size", "Swap in MiB")),
        )
    }


def test_definition_without_api_file_is_reported_and_not_listed(tmp_path: Path) -> None:
    make_os(tmp_path, "broken", api=None)

    catalog = discover([str(tmp_path)], [])

    assert catalog.entries == {}
    assert catalog.problems == [f"{tmp_path}/broken: missing ganeti_api_version"]


def test_definition_supporting_only_api_10_is_reported_as_unsupported(tmp_path: Path) -> None:
    make_os(tmp_path, "old", api="10\n5\n")

    catalog = discover([str(tmp_path)], [])

    assert catalog.entries == {}
    assert catalog.problems == [f"{tmp_path}/old: supports API 10, 5 only; Corral needs 20"]


def test_non_executable_scripts_are_reported(tmp_path: Path) -> None:
    make_os(tmp_path, "noexec", executable=False)

    catalog = discover([str(tmp_path)], [])

    assert catalog.entries == {}
    assert f"{tmp_path}/noexec: create is not executable (chmod u+x {tmp_path}/noexec/create)" in (
        catalog.problems
    )


def test_every_problem_of_a_definition_is_reported_at_once(tmp_path: Path) -> None:
    make_os(tmp_path, "half", scripts=("create", "export", "import", "rename"), parameters=None)

    catalog = discover([str(tmp_path)], [])

    assert catalog.problems == [
        f"{tmp_path}/half: verify is missing",
        f"{tmp_path}/half: missing parameters.list (required by API 20; it may be empty)",
    ]


def test_unparsable_api_version_is_reported(tmp_path: Path) -> None:
    make_os(tmp_path, "odd", api="twenty\n")

    catalog = discover([str(tmp_path)], [])

    assert catalog.entries == {}
    assert catalog.problems == [
        f"{tmp_path}/odd: ganeti_api_version must hold one number per line, got ['twenty']"
    ]


def test_first_directory_in_search_path_order_wins(tmp_path: Path) -> None:
    first = make_os(tmp_path / "a", "debian", api=None)
    make_os(tmp_path / "b", "debian")
    make_os(tmp_path / "b", "noop")

    catalog = discover([str(tmp_path / "missing"), str(tmp_path / "a"), str(tmp_path / "b")], [])

    assert sorted(catalog.entries) == ["noop"]
    assert catalog.problems == [f"{first}: missing ganeti_api_version"]


def test_files_in_the_search_path_are_not_definitions(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not an OS\n")

    catalog = discover([str(tmp_path)], [])

    assert catalog.entries == {} and catalog.problems == []


def test_qcow2_files_become_images_named_by_their_stem(tmp_path: Path) -> None:
    image = make_image(tmp_path / "images", "debian-12")
    (tmp_path / "images" / "notes.txt").write_text("ignored\n")

    catalog = discover([], [str(tmp_path / "images")])

    assert catalog.entries == {"debian-12": OsImage("debian-12", str(image))}
    assert catalog.entries["debian-12"].kind == "image"


def test_script_wins_over_image_of_the_same_name(tmp_path: Path) -> None:
    os_dir = make_os(tmp_path / "os", "debian")
    image = make_image(tmp_path / "images", "debian")

    catalog = discover([str(tmp_path / "os")], [str(tmp_path / "images")])

    assert isinstance(catalog.entries["debian"], OsDefinition)
    assert catalog.problems == [
        f"{image}: OS 'debian' is also the script OS at {os_dir}; using the script"
    ]


def test_file_without_qcow2_header_is_reported_not_listed(tmp_path: Path) -> None:
    image = make_image(tmp_path, "raw-disk", header=b"\x00" * 512)

    catalog = discover([], [str(tmp_path)])

    assert catalog.entries == {}
    assert catalog.problems == [
        f"{image}: not a qcow2 image (convert it with qemu-img convert -O qcow2)"
    ]


def test_lookup_of_unknown_os_lists_what_is_available(tmp_path: Path) -> None:
    make_os(tmp_path / "os", "noop")
    make_image(tmp_path / "images", "alpine")
    catalog = discover([str(tmp_path / "os")], [str(tmp_path / "images")])

    with pytest.raises(UnknownOs) as info:
        lookup(catalog, "debian")

    assert info.value.available == ["alpine", "noop"]
    assert "available: alpine, noop" in str(info.value)


def test_lookup_of_invalid_os_says_why_it_is_unusable(tmp_path: Path) -> None:
    make_os(tmp_path, "debian", executable=False, scripts=("create",))
    catalog = discover([str(tmp_path)], [])

    with pytest.raises(UnknownOs) as info:
        lookup(catalog, "debian")

    assert "'debian' is installed but invalid" in str(info.value)
    assert "create is not executable" in str(info.value)


def test_lookup_with_known_variant_returns_the_definition(tmp_path: Path) -> None:
    make_os(tmp_path, "debian", variants="bookworm\nbullseye\n")
    catalog = discover([str(tmp_path)], [])

    entry = lookup(catalog, "debian+bullseye")

    assert isinstance(entry, OsDefinition) and entry.name == "debian"


def test_lookup_of_unknown_variant_lists_the_variants(tmp_path: Path) -> None:
    make_os(tmp_path, "debian", variants="bookworm\nbullseye\n")
    catalog = discover([str(tmp_path)], [])

    with pytest.raises(UnknownVariant) as info:
        lookup(catalog, "debian+sid")

    assert info.value.variants == ["bookworm", "bullseye"]
    assert "variants: bookworm, bullseye" in str(info.value)


def test_lookup_refuses_variants_of_an_image(tmp_path: Path) -> None:
    make_image(tmp_path, "alpine")
    catalog = discover([], [str(tmp_path)])

    with pytest.raises(UnknownVariant):
        lookup(catalog, "alpine+edge")


def test_split_os_name_separates_the_variant() -> None:
    assert split_os_name("debian+bookworm") == ("debian", "bookworm")
    assert split_os_name("debian") == ("debian", None)


def _osdef(variants: tuple[str, ...] = ()) -> OsDefinition:
    return OsDefinition("debian", "/srv/os/debian", (20,), variants, (("root-fs", ""),))


def _env(osdef: OsDefinition, **overrides: object) -> dict[str, str]:
    args: dict[str, object] = dict(
        instance_name="web1",
        instance_uuid="u-1",
        primary_node="n1",
        secondary_nodes=[],
        hvparams={},
        beparams={},
        disks=[],
        nics=[],
        variant=None,
        osparams={},
    )
    args.update(overrides)
    return os_environment(osdef, **args)  # type: ignore[arg-type]


def test_environment_carries_api_20_instance_disk_and_nic_variables() -> None:
    env = _env(
        _osdef(("bookworm", "bullseye")),
        secondary_nodes=["n2", "n3"],
        hvparams={"serial_console": "True", "disk_type": "virtio", "nic_type": "e1000"},
        beparams={"memory": "512"},
        disks=[
            DiskEnv("/srv/file/web1/disk0.raw", 1024, "d-0", "root"),
            DiskEnv("/dev/vg/web1.disk1", 64, "d-1", access="ro", backend="block"),
        ],
        nics=[
            NicEnv("aa:00:00:00:00:01", "bridged", "br0", ip="10.0.0.5", uuid="nic-0"),
            NicEnv("aa:00:00:00:00:02", "routed", "rt1", name="back"),
        ],
        variant="bullseye",
        osparams={"root-fs": "ext4"},
        debug=True,
    )

    assert env == {
        "OS_API_VERSION": "20",
        "OS_NAME": "debian",
        "OS_VARIANT": "bullseye",
        "DEBUG_LEVEL": "1",
        "OSP_ROOT_FS": "ext4",
        "PATH": "/sbin:/bin:/usr/sbin:/usr/bin",
        "INSTANCE_NAME": "web1",
        "INSTANCE_OS": "debian+bullseye",
        "INSTANCE_UUID": "u-1",
        "INSTANCE_PRIMARY_NODE": "n1",
        "INSTANCE_SECONDARY_NODES": "n2 n3",
        "INSTANCE_HV_serial_console": "True",
        "INSTANCE_HV_disk_type": "virtio",
        "INSTANCE_HV_nic_type": "e1000",
        "INSTANCE_BE_memory": "512",
        "HYPERVISOR": "kvm",
        "DISK_COUNT": "2",
        "DISK_0_PATH": "/srv/file/web1/disk0.raw",
        "DISK_0_ACCESS": "rw",
        "DISK_0_SIZE": "1024",
        "DISK_0_UUID": "d-0",
        "DISK_0_NAME": "root",
        "DISK_0_BACKEND_TYPE": "file:loop",
        "DISK_0_FRONTEND_TYPE": "virtio",
        "DISK_1_PATH": "/dev/vg/web1.disk1",
        "DISK_1_ACCESS": "ro",
        "DISK_1_SIZE": "64",
        "DISK_1_UUID": "d-1",
        "DISK_1_BACKEND_TYPE": "block",
        "DISK_1_FRONTEND_TYPE": "virtio",
        "NIC_COUNT": "2",
        "NIC_0_MAC": "aa:00:00:00:00:01",
        "NIC_0_MODE": "bridged",
        "NIC_0_LINK": "br0",
        "NIC_0_BRIDGE": "br0",
        "NIC_0_IP": "10.0.0.5",
        "NIC_0_UUID": "nic-0",
        "NIC_0_FRONTEND_TYPE": "e1000",
        "NIC_1_MAC": "aa:00:00:00:00:02",
        "NIC_1_MODE": "routed",
        "NIC_1_LINK": "rt1",
        "NIC_1_NAME": "back",
        "NIC_1_FRONTEND_TYPE": "e1000",
    }


def test_default_variant_is_the_first_listed() -> None:
    env = _env(_osdef(("bookworm", "bullseye")))

    assert env["OS_VARIANT"] == "bookworm"
    assert env["INSTANCE_OS"] == "debian"


def test_os_without_variants_gets_no_os_variant() -> None:
    env = _env(_osdef())

    assert "OS_VARIANT" not in env
    assert env["DEBUG_LEVEL"] == "0"


def test_unknown_variant_is_refused_when_building_the_environment() -> None:
    with pytest.raises(UnknownVariant):
        _env(_osdef(("bookworm",)), variant="sid")


def test_reinstall_is_announced_to_the_script() -> None:
    assert _env(_osdef(), reinstall=True)["INSTANCE_REINSTALL"] == "1"
    assert "INSTANCE_REINSTALL" not in _env(_osdef())


def test_environment_holds_only_strings() -> None:
    env = _env(_osdef(), disks=[DiskEnv("/d", 1, "u")], nics=[NicEnv("m", "bridged", "br0")])

    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())


async def test_export_and_import_scripts_move_a_disk_through_a_dump_whose_reading_can_be_followed(tmp_path: Path) -> None:
    """run_export writes the script's stdout to the dump; run_import feeds it back on stdin, and the dump's file
    position (shared with the script) says how far it has read."""
    os_dir = make_os(tmp_path / "os", "dd-os")
    (os_dir / "export").write_text('#!/bin/sh\nexec dd if="$EXPORT_DEVICE" bs=64k status=none\n')
    (os_dir / "import").write_text('#!/bin/sh\nexec dd of="$IMPORT_DEVICE" bs=64k status=none\n')
    entry = lookup(discover([str(tmp_path / "os")], []), "dd-os")
    assert isinstance(entry, OsDefinition)
    disk, dump, back = tmp_path / "disk", tmp_path / "disk0.dump", tmp_path / "back"
    disk.write_bytes(bytes(range(256)) * 4096)
    env = _env(entry)
    await run_export(entry, env, 0, str(disk), str(dump), str(tmp_path / "log"), 30)
    assert dump.read_bytes() == disk.read_bytes()
    seen = []
    await run_import(entry, env, 0, str(back), str(dump), str(tmp_path / "log"), 30, seen.append)
    assert back.read_bytes() == disk.read_bytes()
    assert len(seen) == 1 and seen[0].name == str(dump) and seen[0].closed, "the dump handed over, closed after"
