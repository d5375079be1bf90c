"""Every error the storage package raises, in one tree.

    StorageError
    ├── CommandError                 a helper program could not do its job
    │   ├── CommandFailed            exited non-zero (argv, rc, stderr_tail)
    │   ├── CommandTimeout           killed after timeout_s
    │   └── CommandNotStarted        could not be executed at all
    ├── InvalidName                  instance name unusable as a path part
    ├── InvalidDiskSpec              size, index or disk list makes no sense
    ├── UnsupportedFormat            template cannot store this format
    ├── DiskExists                   create of a disk that is already there
    ├── DiskNotFound                 grow/size of a disk that is not there
    ├── ShrinkRefused                grow to a smaller size
    ├── DiskSmallerThanImage         clone into a disk smaller than its image
    ├── NoSpace                      not enough free space for the new data
    └── OsDefinitionError            OS definitions and their scripts
        ├── UnknownOs                name not in the catalog (lists what is)
        ├── UnknownVariant           name+variant with a variant not offered
        ├── OsParametersInvalid      `verify parameters` said no (its output)
        │   └── UnknownOsParameters  names not in parameters.list
        └── OsScriptFailed           `create` exited non-zero (log tail)
            └── OsScriptTimeout      `create` killed after timeout_s

Callers that only need "storage did not work" catch StorageError; every
message says what failed and, where we know, what would fix it.
"""

from __future__ import annotations

from collections.abc import Sequence


class StorageError(Exception):
    """Base of every error raised by the storage package."""


class CommandError(StorageError):
    """A helper program (qemu-img, an OS script) did not do its job."""

    def __init__(self, argv: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.argv = list(argv)


class CommandFailed(CommandError):
    def __init__(self, argv: Sequence[str], rc: int, stderr_tail: str) -> None:
        super().__init__(
            argv,
            f"{' '.join(argv[:2])} exited with status {rc}: "
            f"{stderr_tail.strip() or '(no output)'}",
        )
        self.rc = rc
        self.stderr_tail = stderr_tail


class CommandTimeout(CommandError):
    def __init__(self, argv: Sequence[str], timeout_s: float) -> None:
        super().__init__(
            argv, f"{argv[0]} did not finish within {timeout_s:g} s and was killed"
        )
        self.timeout_s = timeout_s


class CommandNotStarted(CommandError):
    def __init__(self, argv: Sequence[str], reason: str) -> None:
        super().__init__(
            argv, f"could not execute {argv[0]}: {reason} (is it installed and executable?)"
        )
        self.reason = reason


class InvalidName(StorageError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"instance name {name!r} cannot be used for storage: {reason}")
        self.name = name
        self.reason = reason


class InvalidDiskSpec(StorageError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedFormat(StorageError):
    def __init__(self, template: str, fmt: str, supported: Sequence[str]) -> None:
        super().__init__(
            f"disk template {template!r} cannot store format {fmt!r}; "
            f"use one of: {', '.join(supported)}"
        )
        self.template = template
        self.fmt = fmt
        self.supported = list(supported)


class DiskExists(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"disk {path} already exists; remove it first or pick another disk index"
        )
        self.path = path


class DiskNotFound(StorageError):
    def __init__(self, instance: str, index: int, where: str) -> None:
        super().__init__(f"instance {instance!r} has no disk {index} in {where}")
        self.instance = instance
        self.index = index
        self.where = where


class ShrinkRefused(StorageError):
    def __init__(self, path: str, current_mib: int, requested_mib: int) -> None:
        super().__init__(
            f"refusing to shrink {path} from {current_mib} MiB to {requested_mib} MiB: "
            "shrinking cuts off guest data; ask for a size of at least "
            f"{current_mib} MiB"
        )
        self.path = path
        self.current_mib = current_mib
        self.requested_mib = requested_mib


class DiskSmallerThanImage(StorageError):
    def __init__(self, image_path: str, image_mib: int, requested_mib: int) -> None:
        super().__init__(
            f"image {image_path} needs a disk of at least {image_mib} MiB, "
            f"{requested_mib} MiB was requested; ask for {image_mib} MiB or more"
        )
        self.image_path = image_path
        self.image_mib = image_mib
        self.requested_mib = requested_mib


class NoSpace(StorageError):
    def __init__(self, path: str, needed_mib: int, free_mib: int) -> None:
        super().__init__(
            f"not enough space in {path}: need {needed_mib} MiB, {free_mib} MiB free; "
            "free some space or place the disk on another node"
        )
        self.path = path
        self.needed_mib = needed_mib
        self.free_mib = free_mib


class OsDefinitionError(StorageError):
    """OS definitions and images: lookup, parameters, install scripts."""


class UnknownOs(OsDefinitionError):
    def __init__(self, name: str, available: Sequence[str], why: Sequence[str] = ()) -> None:
        listing = ", ".join(available) if available else "none"
        message = f"unknown OS {name!r}; available: {listing}"
        if why:
            message += f" ({name!r} is installed but invalid: {'; '.join(why)})"
        super().__init__(message)
        self.name = name
        self.available = list(available)
        self.why = list(why)


class UnknownVariant(OsDefinitionError):
    def __init__(self, os_name: str, variant: str, variants: Sequence[str]) -> None:
        offered = ", ".join(variants) if variants else "none (use the plain name)"
        super().__init__(
            f"OS {os_name!r} has no variant {variant!r}; variants: {offered}"
        )
        self.os_name = os_name
        self.variant = variant
        self.variants = list(variants)


class OsParametersInvalid(OsDefinitionError):
    def __init__(self, os_name: str, output: str) -> None:
        super().__init__(f"OS {os_name!r} rejected its parameters: {output.strip()}")
        self.os_name = os_name
        self.output = output


class UnknownOsParameters(OsParametersInvalid):
    def __init__(self, os_name: str, unknown: Sequence[str], known: Sequence[str]) -> None:
        super().__init__(
            os_name,
            f"unknown parameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(known) if known else 'none'}",
        )
        self.unknown = list(unknown)
        self.known = list(known)


class OsScriptFailed(OsDefinitionError):
    def __init__(
        self, os_name: str, script: str, rc: int | None, log_path: str, log_tail: Sequence[str]
    ) -> None:
        tail = "\n".join(log_tail) if log_tail else "(no output)"
        super().__init__(
            f"OS {os_name!r} script {script} {self._status(rc)}; full log: {log_path}\n{tail}"
        )
        self.os_name = os_name
        self.script = script
        self.rc = rc
        self.log_path = log_path
        self.log_tail = list(log_tail)

    def _status(self, rc: int | None) -> str:
        return "was killed" if rc is None else f"exited with status {rc}"


class OsScriptTimeout(OsScriptFailed):
    def __init__(
        self, os_name: str, script: str, timeout_s: float, log_path: str, log_tail: Sequence[str]
    ) -> None:
        self.timeout_s = timeout_s
        super().__init__(os_name, script, None, log_path, log_tail)

    def _status(self, rc: int | None) -> str:
        return f"did not finish within {self.timeout_s:g} s and was killed"
