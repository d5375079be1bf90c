"""plan_evacuation: which step moves what where, and every reason it refuses, on plain records."""

from __future__ import annotations

from typing import Any

import pytest

from hostagent.master.decide.evacuation import Step, plan_evacuation
from hostagent.clock import SYSTEM
from hostagent.master.jobs import JobContext, JobFailed
from hostagent.master.balancing import StepContext
from hostagent.master.node_ops import NodeOperations
from hostagent.master.jobs import lock_keys

NOW = 1000.0


def cluster(*names: str, memory_mib: int = 8192, disk_mib: int = 100_000,
            **changes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Nodes and fresh reports; `changes` maps a node to fields of its node record or its report."""
    nodes, reports = {}, {}
    for name in names:
        nodes[name] = {"name": name, "drained": False, "offline": False}
        reports[name] = {"node": name, "memory_total_mib": memory_mib, "memory_free_mib": memory_mib,
                         "disk_total_mib": disk_mib, "disk_free_mib": disk_mib, "time": NOW - 5,
                         "instances": {}, "mirrors": {}}
        for key, value in changes.get(name, {}).items():
            (nodes if key in ("drained", "offline") else reports)[name][key] = value
    return nodes, reports


def inst(name: str, primary: str, secondary: str | None = None, memory_mib: int = 1024, disk_mib: int = 1024,
         admin_state: str = "up", in_sync: bool = True) -> dict[str, Any]:
    return {"name": name, "primary_node": primary, "secondary_node": secondary, "memory_mib": memory_mib,
            "disks": [{"index": 0, "size_mib": disk_mib}], "disk_template": "mirror" if secondary else "file",
            "admin_state": admin_state, "replica_in_sync": in_sync}


def running(reports: dict[str, Any], node: str, *names: str, mirror: str = "in_sync") -> None:
    """Make `names` run on `node`, their mirrors (if any) in state `mirror`."""
    for name in names:
        reports[node]["instances"][name] = {"pid": 100, "status": "running"}
        reports[node]["mirrors"][name] = [{"index": 0, "status": mirror, "percent": 40.0, "eta_s": 12,
                                           "remaining_mib": 600}]


def steps(plan: Any) -> list[tuple[str, str, str, str]]:
    return [(s.action, s.instance, s.source, s.target) for s in plan.steps]


def test_a_running_mirror_primary_migrates_then_gets_a_new_secondary_and_copies_on_the_node_move():
    nodes, reports = cluster("n1", "n2", "n3")
    instances = [inst("m1", "n2", "n3"), inst("k1", "n1", "n2")]
    running(reports, "n2", "m1")
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert plan.fits, plan.problems
    assert steps(plan) == [("migrate", "m1", "n2", "n3"),
                           ("replace-secondary", "k1", "n2", "n3"),
                           ("replace-secondary", "m1", "n2", "n1")]
    assert plan.instances() == ["k1", "m1"]


def test_guests_leave_the_node_before_any_disk_copy_starts():
    nodes, reports = cluster("n1", "n2", "n3", "n4")
    instances = [inst("a", "n1", "n2"), inst("b", "n2", "n3"), inst("c", "n2", None, admin_state="down"),
                 inst("d", "n2", "n4", admin_state="down")]
    running(reports, "n2", "b")
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert [s.action for s in plan.steps] == ["migrate", "failover", "move",
                                              "replace-secondary", "replace-secondary", "replace-secondary"]


def test_a_running_unreplicated_instance_refuses_the_whole_evacuation_and_says_to_stop_it():
    nodes, reports = cluster("n1", "n2", "n3")
    instances = [inst("web1", "n2"), inst("web2", "n2"), inst("m1", "n2", "n3")]
    running(reports, "n2", "web1", "web2", "m1")
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert not plan.fits
    assert len(plan.problems) == 1
    assert "instances 'web1', 'web2' on node 'n2'" in plan.problems[0]
    assert "`corral instance stop web1 web2`" in plan.problems[0]


def test_an_unreplicated_instance_set_to_run_counts_as_running_even_while_it_is_down():
    nodes, reports = cluster("n1", "n2")
    plan = plan_evacuation("n2", nodes, reports, [inst("web1", "n2", admin_state="up")], NOW)
    assert "instance 'web1' on node 'n2': not replicated and running" in plan.problems[0]


def test_a_stopped_unreplicated_instance_moves_to_the_least_loaded_node_that_fits():
    nodes, reports = cluster("n1", "n2", "n3", "n4", n3={"disk_free_mib": 100})
    instances = [inst("f1", "n2", admin_state="down"), inst("other", "n1")]
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert steps(plan) == [("move", "f1", "n2", "n4")]


def test_a_stopped_mirror_primary_fails_over_only_from_a_copy_known_in_sync():
    nodes, reports = cluster("n1", "n2", "n3")
    plan = plan_evacuation("n2", nodes, reports, [inst("m1", "n2", "n3", admin_state="down")], NOW)
    assert steps(plan) == [("failover", "m1", "n2", "n3"), ("replace-secondary", "m1", "n2", "n1")]

    plan = plan_evacuation("n2", nodes, reports, [inst("m1", "n2", "n3", admin_state="down", in_sync=False)], NOW)
    assert steps(plan) == []
    assert "copy on node 'n3' is not known to be in sync" in plan.problems[0]


def test_a_migration_waits_for_the_mirror_to_be_in_sync():
    nodes, reports = cluster("n1", "n2", "n3")
    running(reports, "n2", "m1", mirror="syncing")
    plan = plan_evacuation("n2", nodes, reports, [inst("m1", "n2", "n3")], NOW)
    assert not plan.fits
    assert "not in sync on node 'n3' (syncing 40.0 %" in plan.problems[0]


def test_a_resyncing_mirror_may_migrate_the_switchover_waits_for_writes_in_flight():
    nodes, reports = cluster("n1", "n2", "n3")
    running(reports, "n2", "m1", mirror="resyncing")
    assert plan_evacuation("n2", nodes, reports, [inst("m1", "n2", "n3")], NOW).fits


def test_a_secondary_short_of_memory_for_the_migration_is_named_with_what_it_lacks():
    nodes, reports = cluster("n1", "n2", "n3", n3={"memory_total_mib": 2048, "memory_free_mib": 2048})
    instances = [inst("m1", "n2", "n3", memory_mib=1536), inst("big", "n3", None, memory_mib=1024)]
    running(reports, "n2", "m1")
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert not plan.fits
    assert plan.problems[0].startswith("instance 'm1' cannot live-migrate to its secondary node 'n3' (1.5G memory): "
                                       "n3: only 1G memory free")


def test_migrations_onto_one_secondary_count_each_others_memory():
    nodes, reports = cluster("n1", "n2", "n3", n3={"memory_free_mib": 2560})
    instances = [inst(f"m{i}", "n2", "n3", memory_mib=1024) for i in range(3)]
    running(reports, "n2", "m0", "m1", "m2")
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert [s.instance for s in plan.steps if s.action == "migrate"] == ["m0", "m1"]
    assert plan.problems[0] == ("instance 'm2' cannot live-migrate to its secondary node 'n3' (1G memory): "
                                "n3: only 512M memory free by its last report")


def test_copies_never_go_to_drained_offline_or_silent_nodes_nor_back_to_the_node():
    nodes, reports = cluster("n1", "n2", "n3", "n4", "n5", "n6", n3={"drained": True}, n4={"offline": True},
                             n5={"time": NOW - 300})
    plan = plan_evacuation("n2", nodes, reports, [inst("k1", "n1", "n2")], NOW)
    assert steps(plan) == [("replace-secondary", "k1", "n2", "n6")]


def test_with_no_node_left_for_a_copy_every_nodes_shortage_is_named():
    nodes, reports = cluster("n1", "n2", "n3", "n4", n3={"drained": True}, n4={"disk_free_mib": 10})
    plan = plan_evacuation("n2", nodes, reports, [inst("k1", "n1", "n2")], NOW)
    assert steps(plan) == []
    problem = plan.problems[0]
    assert problem.startswith("no node can hold the copy of instance 'k1' (primary 'n1', 1G memory, 1G disk")
    assert "n3: drained" in problem and "n4: only 10M disk free" in problem


def test_a_two_node_cluster_has_nowhere_for_the_copy():
    nodes, reports = cluster("n1", "n2")
    plan = plan_evacuation("n2", nodes, reports, [inst("k1", "n1", "n2")], NOW)
    assert "the cluster has no node besides 'n2', 'n1'; add one" in plan.problems[0]


def test_disk_used_by_earlier_copies_counts_for_the_later_ones():
    nodes, reports = cluster("n1", "n2", "n3", "n4", n3={"disk_free_mib": 1500}, n4={"disk_free_mib": 1500})
    instances = [inst("a", "n1", "n2"), inst("b", "n1", "n2"), inst("c", "n1", "n2")]
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert steps(plan) == [("replace-secondary", "a", "n2", "n3"), ("replace-secondary", "b", "n2", "n4")]
    assert "'c'" in plan.problems[0] and "n3: only 476M disk free" in plan.problems[0]


def test_a_silent_node_cannot_give_up_its_primaries_but_its_copies_still_get_new_homes():
    nodes, reports = cluster("n1", "n2", "n3", n2={"time": NOW - 120})
    instances = [inst("m1", "n2", "n3"), inst("k1", "n1", "n2")]
    plan = plan_evacuation("n2", nodes, reports, instances, NOW)
    assert steps(plan) == [("replace-secondary", "k1", "n2", "n3")]
    assert "node 'n2' has not reported for 120 s" in plan.problems[0]
    assert "`corral node failover n2 --ignore-consistency`" in plan.problems[0]


def test_an_empty_node_needs_no_step_and_an_unknown_one_is_named():
    nodes, reports = cluster("n1", "n2")
    assert plan_evacuation("n2", nodes, reports, [inst("a", "n1")], NOW).steps == ()
    assert plan_evacuation("n2", nodes, reports, [inst("a", "n1")], NOW).fits
    assert plan_evacuation("n9", nodes, reports, [], NOW).problems == ("no node named 'n9' (nodes: n1, n2)",)


def test_planning_leaves_the_given_records_untouched():
    nodes, reports = cluster("n1", "n2", "n3")
    instances = [inst("m1", "n2", "n3")]
    running(reports, "n2", "m1")
    plan_evacuation("n2", nodes, reports, instances, NOW)
    assert instances[0]["primary_node"] == "n2" and not nodes["n2"]["drained"]
    assert reports["n3"]["memory_free_mib"] == 8192


def test_a_step_round_trips_through_the_job_record_and_names_its_target_to_the_instance_job():
    step = Step("replace-secondary", "m1", "n2", "n1")
    assert Step.from_dict(step.to_dict()) == step
    assert step.op == "instance.replace-secondary" and step.job_args() == {"name": "m1", "node": "n1"}
    assert Step("failover", "m1", "n2", "n3").job_args() == {"name": "m1", "ignore_consistency": False}
    assert "node 'n2' by node 'n1'" in step.describe()


def test_the_evacuation_job_locks_its_node_and_every_instance_it_moves():
    job = {"op": "node.evacuate", "args": {"node": "n2", "steps": [], "instances": ["k1", "m1"]}}
    assert lock_keys(job) == ["node/n2", "instance/k1", "instance/m1"]


class _Runner:
    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []
        self.clock = SYSTEM

    async def save(self, job: dict[str, Any]) -> None:
        self.saved.append({"progress": job["progress"], "log": list(job["log"])})


async def test_a_steps_progress_is_its_slice_of_the_evacuations_progress():
    runner = _Runner()
    job = {"id": 7, "log": [], "progress": None}
    parent = JobContext(runner, job)  # type: ignore[arg-type]
    step = StepContext(parent, 3, 4)
    await step.progress(50, 100, "copying disk 0 to node 'n1'", 0.0)
    await step.log("copied")
    assert job["progress"]["percent"] == 62.5
    assert job["progress"]["text"] == "step 3 of 4: copying disk 0 to node 'n1'"
    assert job["log"][-1][1] == "copied"


class _Ops:
    """The instance jobs an evacuation runs, recorded; `fail` names the step (op, instance) that fails."""

    def __init__(self, fail: tuple[str, str] | None = None) -> None:
        self.fail = fail
        self.ran: list[tuple[str, str]] = []

    def handlers(self) -> dict[str, Any]:
        def job(op: str) -> Any:
            async def run(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
                self.ran.append((op, args["name"]))
                if (op, args["name"]) == self.fail:
                    raise JobFailed("node 'n3' does not answer")
                await ctx.progress(1, 2, "half-way", 0.0)
                return {}
            return run
        return {f"instance.{action}": job(f"instance.{action}")
                for action in ("migrate", "failover", "move", "replace-secondary")}


class _Store:
    """A config with no instances left on the node once the steps ran."""

    role = None

    async def prefix(self, prefix: str) -> list[dict[str, Any]]:
        return []


EVACUATION = {"node": "n2", "instances": ["f1", "k1", "m1"], "steps": [
    Step("migrate", "m1", "n2", "n3").to_dict(), Step("move", "f1", "n2", "n1").to_dict(),
    Step("replace-secondary", "k1", "n2", "n3").to_dict()]}


async def test_an_evacuation_runs_each_step_as_its_instance_job_and_says_when_the_node_is_empty():
    ops, job = _Ops(), {"id": 3, "log": [], "progress": None}
    result = await NodeOperations(_Store(), None, ops.handlers(), None)._job_evacuate(JobContext(_Runner(), job), EVACUATION)  # type: ignore
    assert ops.ran == [("instance.migrate", "m1"), ("instance.move", "f1"), ("instance.replace-secondary", "k1")]
    lines = [line for _, line in job["log"]]
    assert "step 2 of 3: move stopped instance 'f1' with its disks from node 'n2' to node 'n1'" in lines
    assert lines[-1].startswith("node 'n2' is empty")
    assert result == {"node": "n2", "steps": 3, "left": []}


async def test_an_evacuation_stops_at_the_first_failed_step_saying_what_was_done_and_what_remains():
    ops, job = _Ops(fail=("instance.move", "f1")), {"id": 3, "log": [], "progress": None}
    with pytest.raises(JobFailed) as err:
        await NodeOperations(_Store(), None, ops.handlers(), None)._job_evacuate(JobContext(_Runner(), job), EVACUATION)  # type: ignore
    assert ops.ran == [("instance.migrate", "m1"), ("instance.move", "f1")]
    message = str(err.value)
    assert message.startswith("step 2 of 3 failed (move stopped instance 'f1' with its disks from node 'n2' to "
                              "node 'n1'): node 'n3' does not answer.")
    assert "Done: migrate 'm1'. Not done: move 'f1', replace-secondary 'k1'." in message
    assert "`corral node evacuate n2` again" in message


async def test_a_copys_progress_says_what_is_left_and_its_current_rate_and_a_wait_shows_the_copys_own_eta():
    from fakes.clock import FakeClock
    runner = _Runner()
    runner.clock = FakeClock()  # type: ignore[assignment]
    job = {"id": 8, "log": [], "progress": None}
    parent = JobContext(runner, job)  # type: ignore[arg-type]
    step = StepContext(parent, 1, 2)
    for second in range(6):  # 20 MiB/s
        await step.progress(20.0 * second, 1000.0, "copying disk 0 to node 'n1'", 0.0, mib=True)
        runner.clock.advance(1.0)  # type: ignore[attr-defined]
    assert job["progress"]["text"].startswith("step 1 of 2: copying disk 0 to node 'n1': ")
    assert "left at 20 MiB/s" in job["progress"]["text"], job["progress"]["text"]
    await step.waiting("copy of 'db1': syncing 40 %", 12.0)
    assert job["progress"]["text"] == "step 1 of 2: copy of 'db1': syncing 40 %"
    assert job["progress"]["eta_s"] == 12.0
    assert job["progress"]["percent"] == pytest.approx(100.0 * 0.5 * 100 / 1000, abs=0.1)
