"""LVM names and reports as pure functions, so they test without LVM.

Naming: the LV of disk N of instance I is `corral-<I>-disk<N>`, with every
'_' of I written as '+', and it carries the tags `corral-instance=<I>` and
`corral-disk=<N>`.

- Greppable: `lvs | grep corral-web1-` finds an instance's disks, and the
  tags hold the exact instance name, whatever the encoding did.
- Cannot collide: N is the digits after the last "-disk", so the name maps
  back to exactly one (I, N); '+' never occurs in instance names, so the
  '_' → '+' step is reversible too.
- Always valid for LVM: instance names use only letters, digits, '.', '_'
  and '-'; the "corral-" prefix keeps names from being '.', '..',
  'snapshot' or 'pvmove', and without '_' no name can contain the reserved
  strings ('_tmeta', '_rimage', ...), which all start with '_'.
- Length is the one limit left: LVM 2.03 refuses an LV when len(vg) +
  len(lv) exceeds 124 (measured), and once active the device-mapper name
  `<vg>-<lv>`, every '-' doubled, must fit in 127 bytes. `lv_name` refuses
  names whose escaped device-mapper name exceeds 125, which satisfies both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.base import MIB, check_disk, check_instance_name
from storage.errors import InvalidName, StorageError

LV_PREFIX = "corral-"
TAG_INSTANCE = "corral-instance="
TAG_DISK = "corral-disk="
TAG_ADOPTED = "corral-adopted="  # the name an adopted LV had (`instance add --disk adopt=NAME`)

_DISK_SEPARATOR = "-disk"
_INDEX_RE = re.compile(r"0|[1-9][0-9]*")
_VG_RE = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
DM_NAME_MAX = 125

LVS_FIELDS = "lv_name,lv_size,lv_tags,vg_name,lv_attr,origin"
VGS_FIELDS = "vg_name,vg_size,vg_free,vg_extent_size"


@dataclass(frozen=True)
class LvReport:
    """One row of `lvs`, sizes in bytes."""

    name: str
    vg: str
    size_bytes: int
    tags: tuple[str, ...]
    attr: str = ""  # lv_attr, e.g. "-wi-ao----": [0] the kind ('-' plain, 's' snapshot), [4] 'a' active ('I':
    # an invalid snapshot), [5] 'o' open
    origin: str = ""  # the LV a snapshot is of


@dataclass(frozen=True)
class VgReport:
    """One row of `vgs`, sizes in bytes."""

    name: str
    size_bytes: int
    free_bytes: int
    extent_bytes: int

    @property
    def size_mib(self) -> int:
        return self.size_bytes // MIB

    @property
    def free_mib(self) -> int:
        # Round down: a partial MiB cannot hold a disk that asks for it.
        return self.free_bytes // MIB

    def allocated_bytes(self, size_mib: int) -> int:
        """What an LV of size_mib really takes: LVM rounds up to whole extents."""
        extents = -(-size_mib * MIB // self.extent_bytes)
        return extents * self.extent_bytes


def vg_name_problem(vg: str) -> str | None:
    """Why vg cannot name a volume group, or None when it can."""
    if vg in ("", ".", ".."):
        return "it is empty, '.' or '..'"
    if not _VG_RE.fullmatch(vg):
        return "use letters, digits, '+', '_', '.' and '-', not starting with '-'"
    return None


def dm_name(vg: str, lv: str) -> str:
    """The device-mapper name of an active LV (LVM doubles each '-')."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def lv_name(vg: str, instance: str, index: int) -> str:
    """The LV name of a disk; InvalidName if too long for this VG."""
    check_disk(instance, index)
    name = f"{LV_PREFIX}{instance.replace('_', '+')}{_DISK_SEPARATOR}{index}"
    length = len(dm_name(vg, name))
    if length > DM_NAME_MAX:
        raise InvalidName(
            instance,
            f"with volume group {vg!r} its LVM device name would be {length} characters, "
            f"at most {DM_NAME_MAX} fit; use a shorter name (each '-' counts twice)",
        )
    return name


def disk_tags(instance: str, index: int) -> tuple[str, str]:
    """The tags that tie an LV to its disk even if the LV is renamed."""
    return f"{TAG_INSTANCE}{instance}", f"{TAG_DISK}{index}"


def parse_lv_name(name: str) -> tuple[str, int] | None:
    """(instance, index) for an LV name made by lv_name, else None."""
    if not name.startswith(LV_PREFIX):
        return None
    encoded, separator, index_text = name[len(LV_PREFIX):].rpartition(_DISK_SEPARATOR)
    if not separator or not _INDEX_RE.fullmatch(index_text):
        return None
    instance = encoded.replace("+", "_")
    if not _valid_instance(instance):
        return None
    # A name we would not have made ('_' in it, say) is not ours.
    if f"{LV_PREFIX}{instance.replace('_', '+')}{_DISK_SEPARATOR}{index_text}" != name:
        return None
    return instance, int(index_text)


def parse_tags(tags: Iterable[str]) -> tuple[str, int] | None:
    """(instance, index) from exactly one instance tag and one disk tag, else None."""
    instances = [t[len(TAG_INSTANCE):] for t in tags if t.startswith(TAG_INSTANCE)]
    indexes = [t[len(TAG_DISK):] for t in tags if t.startswith(TAG_DISK)]
    if len(instances) != 1 or len(indexes) != 1:
        return None
    instance, index_text = instances[0], indexes[0]
    if not _valid_instance(instance) or not _INDEX_RE.fullmatch(index_text):
        return None
    return instance, int(index_text)


def disk_identity(lv: LvReport) -> tuple[str, int] | None:
    """Which disk an LV holds: its tags when it has them, else its name.

    Tags win because they survive a rename (an operator hiding an LV from
    the name scheme still leaves it findable as an orphan).
    """
    return parse_tags(lv.tags) or parse_lv_name(lv.name)


def adoption_problem(name: str, lv: LvReport | None, vg: str) -> str | None:
    """Why the LV `name` (None: not in the volume group) cannot become a Corral disk; None when it can.

    Only a plain LV that nothing holds open and that is no Corral disk already: an open one is in use (a
    mounted file system, a running VM), and a thin pool, snapshot or RAID part is not a disk by itself."""
    if lv is None:
        return f"no logical volume {name!r} in volume group {vg} (`lvs {vg}` lists them)"
    owner = disk_identity(lv)
    if owner is not None:
        return f"LV {vg}/{name} is already disk {owner[1]} of instance '{owner[0]}'"
    if lv.attr[:1] not in ("-", ""):
        return f"LV {vg}/{name} is not a plain logical volume (lv_attr {lv.attr}); only those are adopted"
    if lv.attr[5:6] == "o":
        return (f"LV {vg}/{name} is open (in use by a mounted file system or a running process, lv_attr "
                f"{lv.attr}): stop what uses it first")
    return None


def parse_lvs(stdout: str) -> list[LvReport]:
    """Rows of `lvs --reportformat json -o LVS_FIELDS --units b --nosuffix`."""
    rows = _report_rows(stdout, "lv")
    try:
        return [
            LvReport(
                name=row["lv_name"],
                vg=row["vg_name"],
                size_bytes=int(row["lv_size"]),
                tags=tuple(t for t in row["lv_tags"].split(",") if t),
                attr=row.get("lv_attr", ""),
                origin=row.get("origin", ""),
            )
            for row in rows
        ]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _report_error(stdout, f"bad lv row ({exc!r})") from exc


def parse_vgs(stdout: str) -> list[VgReport]:
    """Rows of `vgs --reportformat json -o VGS_FIELDS --units b --nosuffix`."""
    rows = _report_rows(stdout, "vg")
    try:
        return [
            VgReport(
                name=row["vg_name"],
                size_bytes=int(row["vg_size"]),
                free_bytes=int(row["vg_free"]),
                extent_bytes=int(row["vg_extent_size"]),
            )
            for row in rows
        ]
    except (KeyError, ValueError, TypeError) as exc:
        raise _report_error(stdout, f"bad vg row ({exc!r})") from exc


def report_args(fields: str) -> Sequence[str]:
    """Options that make `lvs`/`vgs` print what parse_lvs/parse_vgs read."""
    return ("--reportformat", "json", "-o", fields, "--units", "b", "--nosuffix")


def _valid_instance(name: str) -> bool:
    try:
        check_instance_name(name)
    except InvalidName:
        return False
    return True


def _report_rows(stdout: str, kind: str) -> list[dict[str, str]]:
    try:
        reports = json.loads(stdout)["report"]
        rows: list[dict[str, str]] = []
        for report in reports:
            rows.extend(report.get(kind, []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _report_error(stdout, f"not an LVM JSON report ({exc!r})") from exc
    if not all(isinstance(row, dict) for row in rows):
        raise _report_error(stdout, f"{kind} rows are not objects")
    return rows


def _report_error(stdout: str, why: str) -> StorageError:
    return StorageError(
        f"cannot read the LVM report: {why}; output began {stdout[:200]!r} "
        "(is this LVM 2.03 or later, which has --reportformat json?)"
    )
