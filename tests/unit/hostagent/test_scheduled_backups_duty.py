"""The scheduled backups duty (hostagent.master.duties.scheduled_backups) on a fake etcd with the real master
role, job runner and store: it submits the export that is due, learns from the job record how it ended, says
so in an event (the failure with the job's error), prunes after a success, and a new master follows the job
the old one submitted. The exports themselves are stand-ins: only the duty's side is under test."""

from __future__ import annotations

import asyncio
from typing import Any

from election.etcd import Op
from fakes.clock import FakeClock
from fakes.etcd import FakeEtcd
from fakes.loop import run
from fakes.master import elected

from hostagent import model
from hostagent.errors import BadRequest
from hostagent.master.duties.scheduled_backups import PASS_EVERY_S, ScheduledBackups
from hostagent.master.jobs import JobContext, JobFailed
from hostagent.master.view import Views

EXPORTS = "/srv/export"


class StandInBackups:
    """Backups.submit_export/submit_remove as the duty calls them; `refuse` refuses an export at submit."""

    def __init__(self) -> None:
        self.exports: list[dict[str, Any]] = []
        self.removed: list[str] = []
        self.refuse = ""

    async def submit_export(self, submit: Any, params: dict[str, Any]) -> int:
        if self.refuse:
            raise BadRequest(self.refuse)
        self.exports.append(params)
        return int(await submit("backup.export", {"name": params["instance"], "node": "n1", "directory": EXPORTS,
                                                  "backup_id": f"new{len(self.exports)}", "live": params["live"],
                                                  "compress": False}, f"export instance '{params['instance']}'"))

    async def submit_remove(self, submit: Any, params: dict[str, Any]) -> int:
        self.removed.append(params["backup"])
        node, path = params["backup"].split(":", 1)
        return int(await submit("backup.remove", {"node": node, "path": path, "instance": "web1"}, "remove"))


def handlers(fail: list[str]) -> dict[str, Any]:
    async def export(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        if fail:
            raise JobFailed(fail[0])
        path = f"{EXPORTS}/{args['name']}/{args['backup_id']}"
        return {"name": args["name"], "node": "n1", "path": path, "ref": f"n1:{path}", "used_bytes": 3 * 2**20,
                "consistency": "filesystems"}

    async def remove(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"removed": f"{args['node']}:{args['path']}"}
    return {"backup.export": export, "backup.remove": remove}


def cluster(etcd: FakeEtcd, clock: FakeClock, ages: list[float], schedule: str = "20s") -> None:
    now = clock.time()
    backups = [{"instance": "web1", "created": now - age, "path": f"{EXPORTS}/web1/old{int(age)}"} for age in ages]
    records = {model.CLUSTER_KEY: {"name": "c"}, model.node_key("n1"): {"name": "n1", "address": "127.0.0.1"},
               model.lease_key("n1"): {"node": "n1"},
               model.report_key("n1"): {"node": "n1", "time": now + 120, "instances": {"web1": {"pid": 5}},
                                        "backups": backups, "export_dirs": [EXPORTS]},
               model.instance_key("web1"): {"name": "web1", "primary_node": "n1", "disk_template": "file",
                                            "admin_state": "up", "backup_schedule": schedule, "backup_keep": 2}}
    etcd.txn([], [Op.put(k, model.dumps(v)) for k, v in records.items()], [])


def events(etcd: FakeEtcd) -> list[tuple[str, str]]:
    kvs, _ = etcd.snapshot()
    return [(e["kind"], e["message"]) for kv in kvs if kv.key.startswith(model.EVENTS)
            for e in [model.loads(kv.value)]]


async def pass_of(duty: ScheduledBackups) -> None:
    """One pass of the duty, once the jobs it submitted before have run (a role tick later: a fresh view)."""
    await asyncio.sleep(PASS_EVERY_S + 4)
    await duty.step()


def test_a_due_export_is_submitted_live_then_recorded_and_the_oldest_beyond_keep_pruned():
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    cluster(etcd, clock, ages=[25, 60, 90])
    stand_in = StandInBackups()

    async def main() -> None:
        master = await elected(etcd, handlers([]))
        duty = ScheduledBackups(master.store, Views(master.store), stand_in)  # type: ignore[arg-type]
        await pass_of(duty)
        assert stand_in.exports == [{"instance": "web1", "to": None, "live": True, "compress": False}]
        await pass_of(duty)
        assert len(stand_in.exports) == 1, "made a moment ago: not due again, although no report shows it yet"
        await master.close()
    run(clock, main())
    assert stand_in.removed == [f"n1:{EXPORTS}/web1/old90", f"n1:{EXPORTS}/web1/old60"], "keep 2: the new one and old25"
    said = events(etcd)
    assert said[0] == ("backup-made", f"scheduled backup of instance 'web1' made: n1:{EXPORTS}/web1/new1 (3M on disk, "
                                      "copied while the guest ran, as of one instant, its file systems frozen by the "
                                      "guest agent; job 1)")
    assert [k for k, _ in said[1:]] == ["backup-pruned", "backup-pruned"]
    assert said[1][1].startswith("scheduled backups of instance 'web1': removing n1:/srv/export/web1/old90, made ")
    assert "only the newest 2 are kept in its export directory (job 2)" in said[1][1]
    assert model.loads(etcd.kvs[model.backup_run_key("web1")].value)["job"] is None


def test_a_failed_export_is_an_event_with_the_job_s_error_and_tried_again_a_period_later():
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    cluster(etcd, clock, ages=[])
    stand_in, fail = StandInBackups(), ["no space left on /srv/export"]

    async def main() -> None:
        master = await elected(etcd, handlers(fail))
        duty = ScheduledBackups(master.store, Views(master.store), stand_in)  # type: ignore[arg-type]
        await pass_of(duty)
        await pass_of(duty)
        assert len(stand_in.exports) == 1, "not again at once"
        fail.clear()
        for _ in range(3):
            await pass_of(duty)
        assert len(stand_in.exports) == 2, "again once a period has passed"
        await pass_of(duty)
        await master.close()
    run(clock, main())
    kinds = events(etcd)
    assert kinds[0] == ("backup-failed", "scheduled backup of instance 'web1' failed (job 1): no space left on "
                                         "/srv/export; tried again in 20 s")
    assert [k for k, _ in kinds[1:]] == ["backup-made"]


def test_an_export_refused_at_submit_is_an_event_too():
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    cluster(etcd, clock, ages=[])
    stand_in = StandInBackups()
    stand_in.refuse = "/tmp is not an export directory of node 'n1'"

    async def main() -> None:
        master = await elected(etcd, handlers([]))
        duty = ScheduledBackups(master.store, Views(master.store), stand_in)  # type: ignore[arg-type]
        await pass_of(duty)
        await master.close()
    run(clock, main())
    assert events(etcd) == [("backup-failed", "scheduled backup of instance 'web1' not started: /tmp is not an "
                                              "export directory of node 'n1'; tried again in 20 s")]


def test_a_new_master_follows_the_job_the_old_one_submitted_and_forgets_unscheduled_instances():
    clock = FakeClock()
    etcd = FakeEtcd(clock)
    cluster(etcd, clock, ages=[])
    stand_in = StandInBackups()

    async def main() -> None:
        master = await elected(etcd, handlers([]))
        await pass_of(ScheduledBackups(master.store, Views(master.store), stand_in))  # type: ignore[arg-type]
        await asyncio.sleep(1)
        successor = ScheduledBackups(master.store, Views(master.store), stand_in)  # type: ignore[arg-type]
        await pass_of(successor)
        assert len(stand_in.exports) == 1
        record = model.loads(etcd.kvs[model.instance_key("web1")].value)
        await master.store.write([Op.put(model.instance_key("web1"), model.dumps({**record, "backup_schedule": ""}))])
        await pass_of(successor)
        await master.close()
    run(clock, main())
    assert [k for k, _ in events(etcd)] == ["backup-made"]
    assert model.backup_run_key("web1") not in etcd.kvs
