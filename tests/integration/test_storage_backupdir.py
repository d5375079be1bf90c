"""Backups in a node's export directories (storage.backupdir) with the real qemu-img."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import read_image_mib

from storage.backupdir import BackupDirs, BackupError
from storage.base import MIB
from storage.errors import NoSpace
from storage.filedisk import FileTemplate

pytestmark = pytest.mark.integration
CONFIG = {"name": "web1", "disks": [{"index": 0, "size_mib": 32, "format": "raw"}]}


def write(path: str, fmt: str, offset_mib: int, byte: int) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {byte} {offset_mib}M 1M", path], check=True,
                   capture_output=True, timeout=30)


async def export(dirs: BackupDirs, directory: str, disk: str, backup_id: str, compress: bool = False):
    partial = dirs.begin(directory, "web1", backup_id, os.stat(disk).st_blocks * 512)
    await dirs.copy_in(partial, {0: (disk, "raw")}, compress)
    return await dirs.commit(partial, {"created": 1000.0, "consistency": "stopped", "compressed": compress,
                                       "source_node": "n1", "disks": {"0": 32 * MIB}, "instance": CONFIG})


async def test_an_export_is_complete_or_absent_and_only_backups_are_read_or_removed(tmp_path: Path):
    disk = await FileTemplate(str(tmp_path / "disks")).create("web1", 0, 32, "raw")
    write(disk, "raw", 5, 0x5A)
    exports = str(tmp_path / "export")
    dirs = BackupDirs((exports,))
    made = await export(dirs, exports, disk, "b1")
    assert (made.instance, made.backup_id, made.disks, made.config) == ("web1", "b1", {0: 32 * MIB}, CONFIG)
    assert made.used_bytes < 4 * MIB, "a sparse copy: the written MiB, not the disk's size"
    assert read_image_mib(dirs.disk_file(made, 0), "qcow2", 5) == bytes([0x5A]) * MIB
    packed = await export(dirs, exports, disk, "b2", compress=True)
    assert packed.compressed and packed.used_bytes <= made.used_bytes
    with pytest.raises(BackupError, match="already exists"):
        dirs.begin(exports, "web1", "b1", 0)
    with pytest.raises(BackupError, match="is not an export directory of this node"):
        dirs.begin(str(tmp_path), "web1", "b3", 0)
    with pytest.raises(BackupError, match="is not an export directory of this node"):
        dirs.begin(exports + "/../elsewhere", "web1", "b3", 0)
    with pytest.raises(NoSpace):
        dirs.begin(exports, "web1", "b3", 2**60)

    cut = dirs.begin(exports, "web1", "b4", 0)  # an export cut short: hidden, listed as a leftover only
    found, problems, leftovers = dirs.everything()
    assert [b.backup_id for b in found] == ["b1", "b2"] and problems == [] and leftovers == [cut]

    os.unlink(dirs.disk_file(packed, 0))
    (Path(exports) / "web1" / "stray").mkdir()
    found, problems, _ = dirs.everything()
    assert [b.backup_id for b in found] == ["b1"]
    assert sorted(problems) == [f"{exports}/web1/stray is not a Corral backup: it has no backup.json",
                                f"backup {exports}/web1/b2 is incomplete: it lacks disk0.qcow2"]
    with pytest.raises(BackupError, match="has no backup.json"):
        dirs.remove(f"{exports}/web1/stray")
    assert (Path(exports) / "web1" / "stray").is_dir(), "what is not a backup is never deleted"
    with pytest.raises(BackupError, match="is not under an export directory"):
        dirs.read(str(tmp_path / "disks"))
    meta = Path(made.path) / "backup.json"
    good = meta.read_text()
    meta.write_text(json.dumps({**json.loads(good), "version": 99}))
    with pytest.raises(BackupError, match="is not a corral-backup version 1 file"):
        dirs.read(made.path)
    meta.write_text(good)
    assert dirs.remove(made.path) is True and not os.path.exists(made.path)
    assert dirs.remove(made.path) is False
