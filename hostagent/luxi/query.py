"""LUXI's `Query` and `QueryClusterInfo` answers, in Ganeti's query result shape, from the very objects the
RAPI serves (hostagent.rapi.shapes): so `hbal -L` and `hbal -m` read the same cluster and print the same
score. Pure.

A query answer is {"fields": [definition per field], "data": [[[status, value] per field] per item]};
status is Ganeti's result status: 0 normal, 1 unknown field, 3 unavailable, 4 node offline. Field names are
Ganeti's: the RAPI's own keys, "be/NAME", "hv/NAME" and "ndp/NAME" for one parameter, a few derived ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

RS_NORMAL, RS_UNKNOWN, RS_UNAVAIL, RS_OFFLINE = 0, 1, 3, 4
ITEM_TYPES = ("node", "instance", "group")
PREFIXES = {"be/": "beparams", "hv/": "hvparams", "ndp/": "ndparams"}
# Ganeti fields a Corral object answers without a RAPI key of the same name
DERIVED: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "forthcoming": lambda item: False,  # Corral has no forthcoming (reserved, not yet created) objects
    "group": lambda item: "default" if "group.uuid" in item else None,
    "disk.count": lambda item: len(item["disk.sizes"]) if "disk.sizes" in item else None,
    "nic.count": lambda item: len(item["nic.macs"]) if "nic.macs" in item else None,
    "pinst_cnt": lambda item: len(item["pinst_list"]) if "pinst_list" in item else None,
}
LIVE_NODE_FIELDS = frozenset({"mtotal", "mnode", "mfree", "dtotal", "dfree", "ctotal", "cnos", "cnodes", "csockets",
                              "sptotal", "spfree"})


class QueryRefused(Exception):
    """A query Corral does not answer (an item type or filter it does not know); the message says which."""


def kind_of(value: Any) -> str:
    """Ganeti's field kind for a value: what a client shows it as."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"


def lookup(item: Mapping[str, Any], field: str) -> tuple[bool, Any]:
    """(known, value) of one field of one RAPI-shaped object."""
    for prefix, key in PREFIXES.items():
        if field.startswith(prefix):
            params = item.get(key)
            if not isinstance(params, Mapping) or field[len(prefix):] not in params:
                return False, None
            return True, params[field[len(prefix):]]
    if field in item:
        return True, item[field]
    if field in DERIVED:
        return True, DERIVED[field](item)
    return False, None


def cell(item: Mapping[str, Any], field: str, kind: str) -> list[Any]:
    known, value = lookup(item, field)
    if not known:
        return [RS_UNKNOWN, None]
    if value is None:
        offline = kind == "node" and field in LIVE_NODE_FIELDS and bool(item.get("offline"))
        return [RS_OFFLINE if offline else RS_UNAVAIL, None]
    return [RS_NORMAL, value]


def definition(field: str, rows: Sequence[list[list[Any]]], column: int) -> dict[str, str]:
    """Ganeti's field definition: name, title, kind (from the values found) and a line of doc."""
    values = [row[column] for row in rows]
    if values and all(status == RS_UNKNOWN for status, _ in values):
        return {"name": field, "title": field, "kind": "unknown", "doc": "Unknown field"}
    found = next((value for status, value in values if status == RS_NORMAL and value is not None), None)
    title = field.split("/")[-1].replace("_", " ").replace(".", " ").title()
    return {"name": field, "title": title, "kind": kind_of(found) if found is not None else "other",
            "doc": f"Ganeti's {field!r}, as Corral's RAPI serves it"}


def matches(item: Mapping[str, Any], flt: Any) -> bool:
    """Ganeti's query filter, the operators a client filtering on names and flags uses: | & ! = != ?
    (null: everything). QueryRefused for any other."""
    if flt is None:
        return True
    if not isinstance(flt, list) or not flt or not isinstance(flt[0], str):
        raise QueryRefused(f"a filter is null or a list starting with its operator, not {flt!r}")
    op, operands = flt[0], flt[1:]
    if op == "|":
        return any(matches(item, f) for f in operands)
    if op == "&":
        return all(matches(item, f) for f in operands)
    if op == "!" and len(operands) == 1:
        return not matches(item, operands[0])
    if op == "?" and len(operands) == 1 and isinstance(operands[0], str):
        return bool(lookup(item, operands[0])[1])
    if op in ("=", "==", "!=") and len(operands) == 2 and isinstance(operands[0], str):
        equal = lookup(item, operands[0])[1] == operands[1]
        return equal if op != "!=" else not equal
    raise QueryRefused(f"filter operator {op!r} with {len(operands)} operand(s) is not supported by Corral "
                       "(supported: | & ! ? = != on fields)")


def answer(kind: str, fields: Any, flt: Any, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `Query` answer for `items` (the RAPI's bulk objects of this kind, in name order)."""
    if kind not in ITEM_TYPES:
        raise QueryRefused(f"Corral answers queries on {', '.join(ITEM_TYPES)}, not on {kind!r}")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise QueryRefused(f"the fields of a query are a list of names, not {fields!r}")
    rows = [[cell(item, field, kind) for field in fields] for item in items if matches(item, flt)]
    return {"fields": [definition(field, rows, i) for i, field in enumerate(fields)], "data": rows}

