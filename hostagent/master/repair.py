"""`corral cluster verify --repair`: fix what is safe to fix, decided purely, carried out by the master.

`plan()` turns verify's findings into steps: an order to a node, a config
key to delete, or nothing, with what the operator can do by hand. Safe
means that no guest and no data can be lost:

- the QEMU of an unknown instance (no instance record, no job working on
  that name) is stopped;
- a QEMU on a node that is not the instance's primary is stopped when the
  primary runs the instance too, or when that node's lease expired after
  the QEMU started (the node then counted as lost: that copy should have
  been fenced, and the master may start the instance elsewhere). Never the
  only running copy otherwise;
- an orphan NBD export (no mirror writes to it) is stopped;
- the restart track of a deleted instance is cleared;
- disks, LVs and DRBD resources are never removed, and a missing disk is
  never made anew: the step gives what to do by hand.

`Repair.run()` reads the config from etcd (the master does not act on a
lagging replica), carries out every step at once with bounded orders (the
API call that asked for it waits), records each action in the events log,
and waits (bounded) until etcd no longer shows what it fixed, so that a
verify right after sees the result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from election.etcd import Op

from hostagent import model, views
from hostagent.master.jobs import JobFailed
from hostagent.master.decide.restarts import Event
from hostagent.master.store import Store
from hostagent.status import report_fresh
from hostagent.views import Finding

log = logging.getLogger(__name__)

ORDER_TIMEOUT_S = 20.0  # a forced QEMU stop: QMP quit, then SIGKILL, each bounded at 5 s by kvm.process
SETTLE_S = 5.0
POLL_S = 0.2


@dataclass(frozen=True)
class Step:
    """What repair does about one finding: an order, a key to delete, or nothing (`manual` says why)."""

    finding: Finding
    action: str = ""  # what is done, in operator words; "" when nothing is
    node: str = ""
    op: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    delete_key: str = ""
    manual: str = ""


def plan(findings: Iterable[Finding], instances: Iterable[Mapping[str, Any]],
         reports: Mapping[str, Mapping[str, Any]], leases: Mapping[str, Mapping[str, Any]],
         busy: Mapping[str, str], now: float) -> list[Step]:
    """One step per finding. `busy`: instance name -> the job (or restart) working on it, in words."""
    by_name = {i["name"]: i for i in instances}
    return [_step(f, by_name, reports, leases, busy, now) for f in findings]


def _step(f: Finding, by_name: Mapping[str, Mapping[str, Any]], reports: Mapping[str, Mapping[str, Any]],
          leases: Mapping[str, Mapping[str, Any]], busy: Mapping[str, str], now: float) -> Step:
    job = busy.get(f.instance) if f.instance else None
    if f.code in ("unknown-qemu", "wrong-node", "orphan-export") and job:
        return Step(f, manual=f"left alone while {job}")
    if f.code == "unknown-qemu":
        if f.instance in by_name:
            return Step(f, manual=f"instance '{f.instance}' exists now; verify again")
        return _stop(f, f"stop the QEMU of unknown instance '{f.instance}' on node '{f.node}' (pid {f.pid})", 0)
    if f.code == "wrong-node":
        return _stray_copy(f, by_name.get(f.instance), reports, leases, now)
    if f.code == "orphan-export":
        return Step(f, action=f"stop the NBD export of disk {f.disk} of '{f.instance}' on node '{f.node}' "
                              f"(pid {f.pid})", node=f.node, op="instance.replica-unexport",
                    args={"name": f.instance, "disks": [{"index": f.disk}]})
    if f.code == "stale-track":
        if f.instance in by_name:
            return Step(f, manual=f"instance '{f.instance}' exists again; verify again")
        return Step(f, action=f"clear the restart track of deleted instance '{f.instance}'",
                    delete_key=model.restart_key(f.instance))
    return Step(f, manual=_by_hand(f))


def _stop(f: Finding, action: str, nic_count: int) -> Step:
    """A forced stop: QMP quit (QEMU flushes the disks and exits), SIGKILL if it does not."""
    return Step(f, action=action, node=f.node, op="instance.stop",
                args={"name": f.instance, "timeout_s": 0, "force": True, "nic_count": nic_count})


def _stray_copy(f: Finding, inst: Mapping[str, Any] | None, reports: Mapping[str, Mapping[str, Any]],
                leases: Mapping[str, Mapping[str, Any]], now: float) -> Step:
    """A QEMU on a node that is not the instance's primary; stopped only when another copy is certain."""
    if inst is None:
        return Step(f, manual=f"instance '{f.instance}' is gone now; verify again")
    primary = inst["primary_node"]
    seen = reports.get(primary) or {}
    if report_fresh(seen, now) and f.instance in seen.get("instances", {}):
        why = f"its primary '{primary}' runs it too"
    elif _lease_lost_since_start(leases.get(f.node), reports.get(f.node), f.instance):
        why = f"node '{f.node}' lost its node lease after this QEMU started, so that copy counts as fenced"
    else:
        return Step(f, manual=f"left running: it is the only running copy and node '{f.node}' has held its "
                              f"node lease since before it started; to run the instance on its primary, stop "
                              f"this copy by hand (on node '{f.node}': kill {f.pid}), then "
                              f"`corral instance start {f.instance}`")
    return _stop(f, f"stop the copy of '{f.instance}' on node '{f.node}' (pid {f.pid}): {why}",
                 len(inst.get("nics", [])))


def _lease_lost_since_start(lease: Mapping[str, Any] | None, report: Mapping[str, Any] | None,
                            instance: str) -> bool:
    """No lease now, or one taken again after the QEMU started: the node lost its lease meanwhile."""
    if lease is None:
        return True
    started = (((report or {}).get("instances") or {}).get(instance) or {}).get("started")
    return started is not None and float(lease.get("since", 0.0)) > float(started)


def _by_hand(f: Finding) -> str:
    """What the operator can do about a finding repair leaves alone."""
    if f.code == "orphan-disk":
        command = f"lvremove {f.subject.removeprefix('/dev/')}" if f.subject.startswith("/dev/") \
            else f"rm -- {f.subject}"
        return f"disks are never deleted automatically; if nothing needs it, on node '{f.node}': {command}"
    if f.code == "missing-disk":
        return (f"its data is not on node '{f.node}': if the LV was renamed, give it back its name "
                f"(lvs -o lv_name,lv_tags shows the corral-instance= and corral-disk= tags of Corral's volumes) "
                f"or restore it from a backup; if it is lost for good, `corral instance remove-disk {f.instance} "
                f"{f.disk} --destroy-data` drops it from the config, or `corral instance reinstall {f.instance}` "
                "makes every disk anew")
    if f.code == "orphan-drbd":
        return (f"DRBD resources are never taken down automatically; if nothing needs it, on node '{f.node}': "
                f"drbdsetup down {f.subject}")
    if f.code == "drbd-split-brain":
        conf = f"/var/lib/corral/drbd/{f.subject}.res (under the node's state_dir)"
        return (f"never resolved automatically: decide which node's data to keep (normally the primary's, where "
                f"the instance ran). On the OTHER node: drbdadm -c {conf} secondary {f.subject}; then "
                f"drbdadm -c ... disconnect {f.subject}; drbdadm -c ... connect --discard-my-data {f.subject}. "
                f"On the node kept: drbdadm -c ... connect {f.subject}. DRBD then resyncs the other node from it")
    if f.code == "duplicate-qemu":
        return (f"both QEMUs may write to the same disks and either may be the guest that is wanted: stop the "
                f"other by hand (on node '{f.node}': kill {f.pid} stops the one its pidfile does not name)")
    if f.code == "untracked-qemu":
        return (f"the agent cannot tell whether it serves a guest anyone needs; if not, on node '{f.node}': "
                f"kill {f.pid}")
    return "nothing safe to do automatically"


def _key(f: Finding) -> tuple[Any, ...]:
    return (f.code, f.node, f.instance, f.pid, f.disk, f.subject)


class Repair:
    """Carries out `plan()` on the master, through the same orders the jobs use."""

    def __init__(self, store: Store, starting: Callable[[str], bool]) -> None:
        self.store = store
        self.starting = starting  # the restart duty is starting that instance: no repair meanwhile

    async def _state(self) -> tuple[list[Finding], dict[str, Any]]:
        """Verify's findings from etcd, and what they were computed from."""
        store = self.store
        instances = await store.prefix(model.INSTANCES)
        tracks = await store.prefix(model.RESTARTS)
        by_track = {t["name"]: t for t in tracks}
        state: dict[str, Any] = {"instances": instances,
                 "reports": {r["node"]: r for r in await store.prefix(model.REPORTS)},
                 "leases": {lease["node"]: lease for lease in await store.prefix(model.LEASES)},
                 "jobs": await store.prefix(model.JOBS)}
        findings = views.verify(await store.prefix(model.NODES),
                                [{**i, "restart": by_track.get(i["name"])} for i in instances],
                                state["reports"], state["jobs"], store.role.node, self.store.clock.time(),
                                cluster=await store.get(model.CLUSTER_KEY) or {}, leases=state["leases"],
                                tracks=tracks)
        return findings, state

    async def run(self) -> list[dict[str, Any]]:
        """Every finding with what was done about it: outcome repaired, failed or left, and why."""
        findings, state = await self._state()
        busy = views.jobs_in_flight(state["jobs"])
        busy |= {f.instance: "the master is restarting it" for f in findings
                 if f.instance and self.starting(f.instance)}
        steps = plan(findings, state["instances"], state["reports"], state["leases"], busy, self.store.clock.time())
        outcomes = await asyncio.gather(*(self._carry_out(s) for s in steps))
        acted = [(s, o) for s, o in zip(steps, outcomes) if s.action]
        if acted:
            now = self.store.clock.time()
            events = [Event(s.finding.instance, s.node or s.finding.node, "repair",
                            f"cluster repair: {s.action}: {'done' if ok == 'repaired' else 'failed'} ({detail})")
                      for s, (ok, detail) in acted]
            await self.store.write([], events=events, now=now)
            await self._settle([s.finding for s, (ok, _) in acted if ok == "repaired"])
        return [{"severity": s.finding.severity, "message": s.finding.message, "code": s.finding.code,
                 "action": s.action, "outcome": outcome, "detail": detail}
                for s, (outcome, detail) in zip(steps, outcomes)]

    async def _carry_out(self, step: Step) -> tuple[str, str]:
        if not step.action:
            return "left", step.manual
        try:
            if step.op:
                result = await self.store.order(step.node, step.op, dict(step.args), timeout_s=ORDER_TIMEOUT_S)
                detail = _result_words(step.op, result)
            else:
                await self.store.write([Op.delete(step.delete_key)])
                detail = "cleared"
        except JobFailed as exc:
            log.warning("cluster repair could not %s: %s", step.action, exc)
            return "failed", str(exc)
        return "repaired", detail  # logged with its event, once recorded

    async def _settle(self, fixed: list[Finding]) -> None:
        """Bounded: until the nodes' new reports (sent after each order) no longer show what was fixed."""
        keys = {_key(f) for f in fixed}
        for _ in range(int(SETTLE_S / POLL_S)):
            findings, _ = await self._state()
            if not keys & {_key(f) for f in findings}:
                return
            await asyncio.sleep(POLL_S)


def _result_words(op: str, result: Mapping[str, Any]) -> str:
    if op == "instance.stop":
        return {"not-running": "it had stopped already", "acpi": "the guest powered off"}.get(
            str(result.get("how")), "stopped")
    if op == "instance.replica-unexport":
        return "stopped" if any(result.get("stopped") or []) else "it had stopped already"
    return "done"
