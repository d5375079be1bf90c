"""Create the disks of a new instance and put an OS on disk 0.

All or nothing: if any step fails (or the caller is cancelled), every disk
this call created is removed before the error propagates, so a failed
`instance add` can simply be retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, Protocol

from storage.base import check_disk
from storage.errors import (
    DiskExists,
    InvalidDiskSpec,
    UnknownOsParameters,
    UnknownVariant,
)
from storage.filedisk import FileTemplate
from storage.osdef import (
    DiskEnv,
    NicEnv,
    OsDefinition,
    OsEntry,
    OsImage,
    os_environment,
    run_create,
    verify_parameters,
)

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Disks(Protocol):
    """What an install needs of a disk template: storage.filedisk's files or storage.lvm's volumes."""

    def check_format(self, fmt: str) -> None: ...

    async def exists(self, instance: str, index: int) -> bool: ...

    def locate(self, instance: str, index: int) -> tuple[str, str]: ...

    async def create(self, instance: str, index: int, size_mib: int, fmt: str) -> str: ...

    async def clone_image(self, instance: str, index: int, image_path: str, size_mib: int, fmt: str, *,
                          image_fmt: str = "qcow2", progress_log: str | None = None) -> str: ...

    async def remove(self, instance: str, index: int) -> None: ...


class DiskSpec(NamedTuple):
    """A disk to create; a plain (size_mib, fmt) tuple is accepted too."""

    size_mib: int
    fmt: str
    uuid: str = ""
    name: str = ""


async def install_os(
    entry: OsEntry,
    template: Disks,
    *,
    instance_name: str,
    instance_uuid: str,
    disks: Sequence[tuple[int, str] | DiskSpec],
    primary_node: str,
    secondary_nodes: Sequence[str] = (),
    hypervisor: str = "kvm",
    hvparams: Mapping[str, str] = _EMPTY,
    beparams: Mapping[str, str] = _EMPTY,
    nics: Sequence[NicEnv] = (),
    variant: str | None = None,
    osparams: Mapping[str, str] = _EMPTY,
    debug: bool = False,
    reinstall: bool = False,
    log_dir: str,
    timeout_s: float,
) -> list[str]:
    """Create every disk of a new instance, install the OS, return the paths.

    An image is copied into disk 0 (seconds, no installer). A script OS
    gets raw files or logical volumes (scripts need a raw file or block
    device); file disks wanted as qcow2 are installed into a raw scratch
    file and converted afterwards.
    timeout_s bounds the OS `create` script.
    """
    specs = [DiskSpec(*d) for d in disks]
    if not specs:
        raise InvalidDiskSpec("an instance with an OS needs at least one disk (disk 0 gets the OS)")
    for index, spec in enumerate(specs):
        check_disk(instance_name, index, spec.size_mib)
        template.check_format(spec.fmt)
        if await template.exists(instance_name, index):
            raise DiskExists(template.locate(instance_name, index)[0])
    if isinstance(entry, OsImage):
        if osparams:
            raise UnknownOsParameters(entry.name, sorted(osparams), ())
        if variant is not None:
            raise UnknownVariant(entry.name, variant, ())
    else:
        await verify_parameters(entry, osparams, variant=variant)

    created: list[int] = []
    try:
        if isinstance(entry, OsImage):
            return await _from_image(entry, template, instance_name, specs, created)
        osdef = entry

        def environment(disk_env: Sequence[DiskEnv]) -> dict[str, str]:
            return os_environment(
                osdef,
                instance_name=instance_name,
                instance_uuid=instance_uuid,
                primary_node=primary_node,
                secondary_nodes=secondary_nodes,
                hypervisor=hypervisor,
                hvparams=hvparams,
                beparams=beparams,
                disks=disk_env,
                nics=nics,
                variant=variant,
                osparams=osparams,
                debug=debug,
                reinstall=reinstall,
            )

        return await _from_script(
            osdef, template, instance_name, specs, created, environment,
            log_dir=log_dir, timeout_s=timeout_s,
        )
    except BaseException as exc:
        await _remove_created(template, instance_name, created, exc)
        raise


async def install_from_images(template: Disks, instance: str, disks: Sequence[tuple[str, DiskSpec]],
                              progress_log: str | None = None,
                              on_disk: Callable[[int], None] | None = None) -> list[str]:
    """Every disk of a new instance copied from a qcow2 image (a backup's), at the size asked (at least the
    image's): no OS installed. All or nothing, like install_os. `on_disk(index)` before each copy, whose
    qemu-img progress lines go to progress_log."""
    for index, (_, spec) in enumerate(disks):
        check_disk(instance, index, spec.size_mib)
        template.check_format(spec.fmt)
        if await template.exists(instance, index):
            raise DiskExists(template.locate(instance, index)[0])
    created: list[int] = []
    paths = []
    try:
        for index, (image, spec) in enumerate(disks):
            if on_disk is not None:
                on_disk(index)
            paths.append(await template.clone_image(instance, index, image, spec.size_mib, spec.fmt,
                                                    progress_log=progress_log))
            created.append(index)
    except BaseException as exc:
        await _remove_created(template, instance, created, exc)
        raise
    return paths


async def _from_image(
    image: OsImage,
    template: Disks,
    instance: str,
    specs: list[DiskSpec],
    created: list[int],
) -> list[str]:
    first = specs[0]
    paths = [await template.clone_image(instance, 0, image.path, first.size_mib, first.fmt)]
    created.append(0)
    for index, spec in enumerate(specs[1:], start=1):
        paths.append(await template.create(instance, index, spec.size_mib, spec.fmt))
        created.append(index)
    return paths


async def _from_script(
    osdef: OsDefinition,
    template: Disks,
    instance: str,
    specs: list[DiskSpec],
    created: list[int],
    environment: Callable[[Sequence[DiskEnv]], dict[str, str]],
    *,
    log_dir: str,
    timeout_s: float,
) -> list[str]:
    script_paths: list[str] = []
    for index, spec in enumerate(specs):
        if spec.fmt == "raw":
            script_paths.append(await template.create(instance, index, spec.size_mib, "raw"))
        else:
            assert isinstance(template, FileTemplate), "only files hold other formats than raw (check_format)"
            script_paths.append(await template.create_scratch(instance, index, spec.size_mib))
        created.append(index)
    disk_env = [
        DiskEnv(path, spec.size_mib, spec.uuid, spec.name)
        for path, spec in zip(script_paths, specs)
    ]
    await run_create(osdef, environment(disk_env), log_dir, timeout_s)
    paths: list[str] = []
    for index, (spec, scratch) in enumerate(zip(specs, script_paths)):
        if spec.fmt == "raw":
            paths.append(scratch)
            continue
        assert isinstance(template, FileTemplate)
        paths.append(
            await template.clone_image(
                instance, index, scratch, spec.size_mib, spec.fmt, image_fmt="raw"
            )
        )
        await template.remove_scratch(instance, index)
    return paths


async def _remove_created(
    template: Disks, instance: str, created: list[int], error: BaseException
) -> None:
    """Undo a failed install; a disk we cannot remove is noted on the error."""
    for index in created:
        try:
            await template.remove(instance, index)
        except Exception as cleanup_error:  # keep going: remove what we can
            log.error(
                "instance %r: could not remove disk %d after a failed install: %s",
                instance, index, cleanup_error,
            )
            error.add_note(f"disk {index} of {instance!r} was left behind: {cleanup_error}")
