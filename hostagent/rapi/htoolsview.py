"""The live cluster in htools' model, read from the RAPI's shapes as htools' own RAPI loader reads them
(Ganeti's Backend/Rapi.hs facts: memory from oper_ram or the beparams, disk from disk_usage, a node offline
or drained counts as offline): `corral cluster export-htools` writes it in htools' text format, so hbal,
hspace and Corral's planners read the same cluster from a file as `-m` reads it live. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hostagent.master.decide.htools import Group, HtoolsCluster, Instance, IPolicy, ISpec, Node


def _spec(spec: Mapping[str, Any]) -> ISpec:
    return ISpec(int(spec["memory-size"]), int(spec["cpu-count"]), int(spec["disk-size"]), int(spec["disk-count"]),
                 int(spec["nic-count"]), int(spec["spindle-use"]))


def policy(owner: str, ipolicy: Mapping[str, Any]) -> IPolicy:
    return IPolicy(owner, _spec(ipolicy["std"]),
                   tuple((_spec(m["min"]), _spec(m["max"])) for m in ipolicy["minmax"]),
                   tuple(ipolicy["disk-templates"]), float(ipolicy["vcpu-ratio"]), float(ipolicy["spindle-ratio"]))


def to_htools(info: Mapping[str, Any], groups: Sequence[Mapping[str, Any]], nodes: Sequence[Mapping[str, Any]],
              instances: Sequence[Mapping[str, Any]]) -> HtoolsCluster:
    """The cluster of /2/info, /2/groups?bulk=1, /2/nodes?bulk=1 and /2/instances?bulk=1."""
    return HtoolsCluster(
        groups=tuple(Group(g["name"], g["uuid"], g["alloc_policy"], tuple(g.get("tags") or ())) for g in groups),
        nodes=tuple(Node(n["name"], float(n["mtotal"] or 0), int(n["mnode"] or 0), int(n["mfree"] or 0),
                         float(n["dtotal"] or 0), int(n["dfree"] or 0), float(n["ctotal"] or 1),
                         bool(n["offline"] or n["drained"]), n["name"] == info.get("master"), n["group.uuid"],
                         int(n["ndparams"]["spindle_count"]), tuple(n.get("tags") or ()),
                         node_cpus=int(n.get("cnos") or 1))
                    for n in nodes),
        instances=tuple(Instance(i["name"], int(i["oper_ram"] if i.get("oper_ram") is not None
                                                else i["beparams"]["memory"]),
                                 int(i["disk_usage"]), int(i["beparams"]["vcpus"]), i["status"],
                                 bool(i["beparams"]["auto_balance"]), i["pnode"],
                                 i["snodes"][0] if i["snodes"] else "", i["disk_template"], tuple(i.get("tags") or ()),
                                 int(i["beparams"]["spindle_use"]))
                        for i in instances),
        tags=tuple(info.get("tags") or ()),
        ipolicies=(policy("", info["ipolicy"]), *(policy(g["name"], g["ipolicy"]) for g in groups)))
