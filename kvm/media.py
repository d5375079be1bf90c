"""A running QEMU's CD-ROM medium and VNC password, changed through QMP.

A CD-ROM drive cannot be added to a running machine on IDE (q35's AHCI has no
hot-plug), so an instance that has a CD-ROM always has its drive, empty or
not (kvm.cmdline), and only the medium changes live. The guest may have
locked the tray (a mounted CD); the operator asked, so the tray is opened by
force. The VNC password is set here, never on QEMU's command line.
"""

from __future__ import annotations

from typing import Any, Protocol

VNC_PASSWORD_MAX_CHARS = 8  # VNC authentication is DES with an 8-byte key: more is silently ignored


class QmpSession(Protocol):
    """What these commands need of kvm.qmp.Qmp (tests pass a recorder)."""

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object: ...


def change_arguments(device: str, path: str) -> dict[str, object]:
    """blockdev-change-medium's arguments: the drive by its qdev id, the image read-only, raw."""
    return {"id": device, "filename": path, "format": "raw", "read-only-mode": "read-only", "force": True}


async def insert(qmp: QmpSession, device: str, path: str) -> None:
    """Put the image at `path` in the drive (replacing any medium) and close the tray."""
    await qmp.execute("blockdev-change-medium", change_arguments(device, path))


async def eject(qmp: QmpSession, device: str) -> None:
    """Open the tray (even if the guest locked it) and take the medium out; the drive stays, empty."""
    await qmp.execute("blockdev-open-tray", {"id": device, "force": True})
    await qmp.execute("blockdev-remove-medium", {"id": device})


async def medium(qmp: QmpSession, device: str) -> str | None:
    """The image file in the drive `device` ("" when it is empty), None when there is no such drive."""
    for entry in _list(await qmp.execute("query-block")):
        if entry.get("qdev") == device:  # a device with an id is listed by that id
            inserted = entry.get("inserted")
            return str(inserted.get("file", "")) if isinstance(inserted, dict) else ""
    return None


async def set_vnc_password(qmp: QmpSession, password: str) -> None:
    """VNC authentication with `password` from now on (a QEMU started with password=on lets no one in before)."""
    await qmp.execute("set_password", {"protocol": "vnc", "password": password[:VNC_PASSWORD_MAX_CHARS]})


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
