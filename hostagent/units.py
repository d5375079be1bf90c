"""Size parsing shared by the CLI and the agent, so both reject the same input."""

from __future__ import annotations

import re

_UNITS_MIB = {"": 1, "M": 1, "MB": 1, "MIB": 1, "G": 1024, "GB": 1024, "GIB": 1024,
              "T": 1024 * 1024, "TB": 1024 * 1024, "TIB": 1024 * 1024}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*\Z")


class SizeError(ValueError):
    """A size string that is not a positive number with an M/G/T suffix."""

    def __init__(self, what: str, value: object) -> None:
        super().__init__(
            f"{what}: {value!r} is not a size; use a number of MiB or a number with a "
            f"unit, e.g. 512M, 1G, 1.5G, 2T"
        )
        self.what = what
        self.value = value


def parse_mib(value: str | int, what: str = "size") -> int:
    """Parse '512M', '1G', '1.5G' or a bare MiB count into whole MiB (> 0)."""
    if isinstance(value, bool):
        raise SizeError(what, value)
    if isinstance(value, int):
        if value <= 0:
            raise SizeError(what, value)
        return value
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).upper() not in _UNITS_MIB:
        raise SizeError(what, value)
    mib = float(match.group(1)) * _UNITS_MIB[match.group(2).upper()]
    if mib < 1 or mib != int(mib):
        raise SizeError(what, value)
    return int(mib)


def format_mib(mib: int | float) -> str:
    """Render MiB for people: 512M, 1.5G, 2T."""
    for unit, factor in (("T", 1024 * 1024), ("G", 1024)):
        if mib >= factor:
            return f"{mib / factor:.1f}".rstrip("0").rstrip(".") + unit
    return f"{int(mib)}M"
