"""Ganeti's opcodes, as hbal submits them, as Corral's instance actions: each opcode one /v1 action with the
body the RAPI would send for the same request (hostagent.rapi.actions.v1_body), checked as /v1 checks it
(hostagent.api.instances.action_params). Pure; OpcodeRefused says what Corral does not do and what would.

- OP_INSTANCE_MIGRATE: a live migration (Corral's `migrate`); of a stopped instance with allow_failover, a
  failover, as Ganeti falls back; cleanup and non-live migrations are refused.
- OP_INSTANCE_FAILOVER: a failover to the instance's secondary (Corral's `failover`).
- OP_INSTANCE_REPLACE_DISKS, mode replace_new_secondary: a new secondary (Corral's `replace-secondary`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hostagent.api.instances import action_params
from hostagent.errors import BadRequest
from hostagent.rapi.actions import v1_body

SUPPORTED = ("OP_INSTANCE_MIGRATE", "OP_INSTANCE_FAILOVER", "OP_INSTANCE_REPLACE_DISKS")


class OpcodeRefused(Exception):
    """An opcode Corral cannot carry out as asked; the message names it and what would work."""


@dataclass(frozen=True)
class Step:
    """One opcode as a Corral instance action: the action, the instance, and its parameters as /v1 checks
    them."""

    action: str
    instance: str
    params: dict[str, Any] = field(default_factory=dict)


def _instance(op: Mapping[str, Any], instances: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    name = op.get("instance_name")
    if not isinstance(name, str) or not name:
        raise OpcodeRefused(f"{op.get('OP_ID')} needs an instance_name, not {name!r}")
    if name not in instances:
        raise OpcodeRefused(f"{op.get('OP_ID')}: instance '{name}' is unknown")
    return instances[name]


def _ganeti_request(op: Mapping[str, Any], inst: Mapping[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(Corral action, RAPI query, RAPI body): the RAPI request this opcode amounts to."""
    kind = op["OP_ID"]
    if kind == "OP_INSTANCE_MIGRATE":
        if op.get("cleanup"):
            raise OpcodeRefused("OP_INSTANCE_MIGRATE with cleanup: Corral finishes or undoes a failed migration "
                                "itself; nothing is left to clean up")
        non_live = op.get("mode") == "non-live" or op.get("live") is False
        if op.get("allow_failover") and inst.get("admin_state") != "up":
            return "failover", {}, {}  # nothing runs to migrate: Ganeti falls back to a failover too
        if non_live:
            raise OpcodeRefused(f"a non-live migration of '{inst['name']}' is a failover in Corral: submit "
                                "OP_INSTANCE_FAILOVER")
        return "migrate", {}, {"target_node": op.get("target_node")} if op.get("target_node") else {}
    if kind == "OP_INSTANCE_FAILOVER":
        target, secondary = op.get("target_node"), inst.get("secondary_node")
        if target and target != secondary:
            raise OpcodeRefused(f"OP_INSTANCE_FAILOVER of '{inst['name']}' to '{target}': Corral fails an "
                                f"instance over to its secondary ({secondary or 'it has none'}) only")
        return "failover", {}, {"ignore_consistency": bool(op.get("ignore_consistency"))}
    if kind == "OP_INSTANCE_REPLACE_DISKS":
        if op.get("iallocator") and not op.get("remote_node"):
            raise OpcodeRefused(f"OP_INSTANCE_REPLACE_DISKS of '{inst['name']}' with an iallocator: name the new "
                                "secondary in remote_node")
        return "replace-secondary", {"mode": str(op.get("mode") or ""),
                                     "remote_node": str(op.get("remote_node") or "")}, {}
    raise OpcodeRefused(f"opcode {kind} is not supported by Corral's LUXI (it carries out "
                        f"{', '.join(SUPPORTED)}: the moves of hbal -X)")


def step(op: Any, instances: Mapping[str, Mapping[str, Any]]) -> Step:
    """One opcode as one Corral action, checked against the instances' records (by name)."""
    if not isinstance(op, Mapping) or not isinstance(op.get("OP_ID"), str):
        raise OpcodeRefused(f"an opcode is an object with an OP_ID, not {op!r}"[:300])
    if op["OP_ID"] not in SUPPORTED:
        raise OpcodeRefused(f"opcode {op['OP_ID']} is not supported by Corral's LUXI (it carries out "
                            f"{', '.join(SUPPORTED)}: the moves of hbal -X)")
    if op.get("dry_run"):
        raise OpcodeRefused(f"{op['OP_ID']} with dry_run: Corral has no dry run of a single action "
                            "(`corral cluster balance --dry-run` shows a plan)")
    if op.get("depends"):
        raise OpcodeRefused(f"{op['OP_ID']} with depends: Corral's LUXI does not order jobs by dependencies")
    inst = _instance(op, instances)
    action, query, body = _ganeti_request(op, inst)
    try:
        v1 = v1_body(action, query, body, inst)
        return Step(action, str(inst["name"]), action_params(action, v1))
    except BadRequest as exc:
        raise OpcodeRefused(f"{op['OP_ID']} of '{inst['name']}': {exc}") from None


def job_steps(job: Any, instances: Mapping[str, Mapping[str, Any]]) -> list[Step]:
    """A Ganeti job (a list of opcodes, run in order) as Corral actions; refused as a whole before any runs."""
    if not isinstance(job, list) or not job:
        raise OpcodeRefused("a job is a non-empty list of opcodes")
    if len(job) > 8:
        raise OpcodeRefused(f"a job of {len(job)} opcodes: Corral's LUXI takes at most 8 per job")
    return [step(op, instances) for op in job]


def moves(job: Any, instances: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A Ganeti job as the moves of one instance, Corral's `instance.moves` job (hostagent.master.balancing):
    hbal's job moves one instance, in one to three opcodes."""
    steps = job_steps(job, instances)
    names = sorted({s.instance for s in steps})
    if len(names) > 1:
        raise OpcodeRefused(f"a job moving {', '.join(names)}: Corral's LUXI takes one instance per job")
    if any(s.params.get("ignore_consistency") for s in steps):
        raise OpcodeRefused(f"a failover of '{names[0]}' ignoring consistency: `corral instance failover "
                            f"{names[0]} --ignore-consistency` does it, on its own")
    return names[0], [{"action": s.action, **({"node": s.params["node"]} if s.params.get("node") else {})}
                      for s in steps]


def summary(op: Mapping[str, Any]) -> str:
    """Ganeti's job summary: OP_INSTANCE_MIGRATE(web1)."""
    return f"{str(op.get('OP_ID', '?')).removeprefix('OP_')}({op.get('instance_name', '')})"
