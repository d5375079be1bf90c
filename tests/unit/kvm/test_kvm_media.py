"""The QMP commands that change a running guest's CD-ROM and set its VNC password (answers captured from
QEMU 7.2's query-block)."""

import asyncio

from kvm import media

EMPTY = [{"io-status": "ok", "device": "cd0", "locked": False, "removable": True, "qdev": "cdrom0",
          "tray_open": False, "type": "unknown"}]
LOADED = [{"io-status": "ok", "device": "cd0", "locked": False, "removable": True, "qdev": "cdrom0",
           "tray_open": False, "type": "unknown",
           "inserted": {"ro": True, "drv": "raw", "file": "/var/lib/corral/iso/a.iso",
                        "image": {"filename": "/var/lib/corral/iso/a.iso", "format": "raw"}}},
          {"device": "", "qdev": "/machine/peripheral/disk0-dev/virtio-backend", "removable": False,
           "inserted": {"file": "/d/disk0.raw"}}]


class Recorder:
    def __init__(self, answer: object = None) -> None:
        self.calls: list[tuple[str, dict[str, object] | None]] = []
        self.answer = answer

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        self.calls.append((command, arguments))
        return self.answer


def test_a_medium_goes_in_read_only_as_raw_even_if_the_guest_locked_the_tray():
    qmp = Recorder()
    asyncio.run(media.insert(qmp, "cdrom0", "/var/lib/corral/iso/a.iso"))
    assert qmp.calls == [("blockdev-change-medium", {"id": "cdrom0", "filename": "/var/lib/corral/iso/a.iso",
                                                     "format": "raw", "read-only-mode": "read-only", "force": True})]


def test_eject_opens_the_tray_by_force_and_takes_the_medium_out_keeping_the_drive():
    qmp = Recorder()
    asyncio.run(media.eject(qmp, "cdrom0"))
    assert qmp.calls == [("blockdev-open-tray", {"id": "cdrom0", "force": True}),
                         ("blockdev-remove-medium", {"id": "cdrom0"})]


def test_the_medium_is_read_from_query_block_by_the_drive_id():
    assert asyncio.run(media.medium(Recorder(LOADED), "cdrom0")) == "/var/lib/corral/iso/a.iso"
    assert asyncio.run(media.medium(Recorder(EMPTY), "cdrom0")) == ""
    assert asyncio.run(media.medium(Recorder(LOADED), "cdrom1")) is None
    assert asyncio.run(media.medium(Recorder("nonsense"), "cdrom0")) is None


def test_the_vnc_password_is_set_for_vnc_and_cut_to_the_8_characters_vnc_uses():
    qmp = Recorder()
    asyncio.run(media.set_vnc_password(qmp, "abcdefghij"))
    assert qmp.calls == [("set_password", {"protocol": "vnc", "password": "abcdefgh"})]
