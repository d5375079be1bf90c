"""The interface every disk template implements, and its contract."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from storage.errors import (
    DiskExists,
    DiskNotFound,
    InvalidDiskSpec,
    InvalidName,
    NoSpace,
    ShrinkRefused,
    StorageError,
    UnsupportedFormat,
)

__all__ = [
    "DiskExists",
    "DiskNotFound",
    "DiskTemplate",
    "InvalidDiskSpec",
    "InvalidName",
    "NoSpace",
    "ShrinkRefused",
    "StorageError",
    "UnsupportedFormat",
    "Volume",
    "check_disk",
    "check_instance_name",
]

MIB = 1024 * 1024

# Instance names become directory, LV and DRBD resource names: keep them to
# characters every one of those accepts, and never "." / ".." / "a/b".
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_MAX = 200


@dataclass(frozen=True)
class Volume:
    """One disk found on this node, whether or not the config knows it."""

    instance: str
    index: int
    path: str
    size_mib: int
    fmt: str


class DiskTemplate(ABC):
    """Where and how one node stores instance disks.

    Contract for every template (file, plain, drbd, mirror):

    - A disk is named by (instance, index); the template alone decides where
      it lives, and `path()` is a pure function of the name, so the agent can
      hand the path to QEMU without asking the template again.
    - `create` either leaves a complete disk of exactly size_mib or nothing:
      it never leaves something that looks like a disk after a failure or an
      interrupted run. It raises DiskExists if the disk is there (it never
      overwrites), NoSpace before writing when the space is not there,
      UnsupportedFormat for a format outside `formats`.
    - `remove` is idempotent: removing a missing disk succeeds, so a
      restarted agent or a new master can simply send it again.
    - `grow` to the current size succeeds and changes nothing; to a smaller
      size it raises ShrinkRefused; on a missing disk DiskNotFound.
    - `size_mib` is the size the guest sees; DiskNotFound if missing.
    - `list_volumes` reports every complete disk present on this node, so
      the caller can compare it with the config and find orphans.
    - Invalid names or sizes raise InvalidName / InvalidDiskSpec before any
      side effect. A helper program failing in an unexpected way raises a
      CommandError (CommandFailed, CommandTimeout, CommandNotStarted).
    - Every error is a StorageError.
    """

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]

    @abstractmethod
    async def create(self, instance: str, index: int, size_mib: int, fmt: str) -> str:
        """Create an empty disk and return its path."""

    @abstractmethod
    async def remove(self, instance: str, index: int) -> None:
        """Delete the disk if present (idempotent)."""

    @abstractmethod
    async def grow(self, instance: str, index: int, new_size_mib: int) -> None:
        """Enlarge the disk to new_size_mib; never shrinks."""

    @abstractmethod
    def path(self, instance: str, index: int, fmt: str) -> str:
        """Where the disk of this name and format lives (pure)."""

    @abstractmethod
    async def exists(self, instance: str, index: int) -> bool:
        """Whether a complete disk of this name is present, in any format."""

    @abstractmethod
    async def size_mib(self, instance: str, index: int) -> int:
        """Size of the disk as the guest sees it."""

    @abstractmethod
    async def list_volumes(self) -> list[Volume]:
        """Every complete disk of this template on this node."""

    def check_format(self, fmt: str) -> None:
        """Raise UnsupportedFormat unless this template can store fmt."""
        if fmt not in self.formats:
            raise UnsupportedFormat(self.name, fmt, self.formats)


def check_instance_name(name: str) -> None:
    """Refuse names that could escape the storage directory or break tools."""
    if not name:
        raise InvalidName(name, "it is empty")
    if len(name) > _NAME_MAX:
        raise InvalidName(name, f"it is longer than {_NAME_MAX} characters")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(
            name, "use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )


def check_disk(instance: str, index: int, size_mib: int | None = None) -> None:
    """Validate a disk name (and size, when given) before any side effect."""
    check_instance_name(instance)
    if index < 0:
        raise InvalidDiskSpec(f"disk index must be 0 or more, got {index}")
    if size_mib is not None and size_mib <= 0:
        raise InvalidDiskSpec(f"disk size must be at least 1 MiB, got {size_mib} MiB")
