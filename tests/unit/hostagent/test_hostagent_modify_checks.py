"""Checks of the boot check, `after` and auto failover fields, at `instance add` and `instance modify`."""

from __future__ import annotations

import copy

import pytest

from hostagent.master import pending
from hostagent.master.decide.checks import ClusterView, check_add, check_kernel, check_modify, check_resources
from hostagent.errors import BadRequest

NODE = {"name": "n1", "address": "127.0.0.1"}
REPORT = {"node": "n1", "time": 0.0, "memory_total_mib": 4096, "memory_free_mib": 3000, "disk_free_mib": 100_000,
          "os": {"img": "image"}}
HV = {"accel": "tcg"}


def record(name: str, after: list[str] | None = None, **extra) -> dict:
    return {"name": name, "disk_template": "file", "primary_node": "n1", "memory_mib": 128, "disks": [],
            "nics": [], "hvparams": {}, "priority": "normal", "after": after or [], "boot_pattern": "",
            "boot_timeout_s": 0.0, "auto_failover": None, **extra}


RECORDS = (record("db1"), record("app1", ["db1"]), record("web1", ["app1"]))


def add(**req):
    view = ClusterView(cluster_hv=HV, nodes={"n1": NODE}, reports={"n1": REPORT},
                       instances={r["name"] for r in RECORDS}, used_macs=set(), records=RECORDS)
    return check_add({"name": "new1", "os": "img", **req}, view, now=0)


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(BadRequest) as err:
        call(*args, **kwargs)
    return str(err.value)


def modify(name: str, **req) -> dict:
    return check_modify(next(r for r in RECORDS if r["name"] == name), req, RECORDS, HV)


def modify_refused(name: str, **req) -> str:
    return refused(modify, name, **req)


def test_add_keeps_the_boot_check_and_auto_failover_with_defaults_when_not_given():
    inst = add(boot_pattern="login:", boot_timeout_s=45)
    assert (inst.boot_pattern, inst.boot_timeout_s, inst.auto_failover) == ("login:", 45.0, None)
    plain = add()
    assert (plain.boot_pattern, plain.boot_timeout_s, plain.auto_failover) == ("", 0.0, None)


def test_a_boot_pattern_must_be_a_regex_that_cannot_match_an_empty_line():
    message = refused(add, boot_pattern="CORRAL-(GUEST")
    assert "boot pattern 'CORRAL-(GUEST' is not an RE2 regular expression (missing ): CORRAL-(GUEST" in message
    assert "boot pattern '.*' matches an empty line, so every boot would pass at once" in \
        refused(add, boot_pattern=".*")
    assert "no backreferences or lookaround" in refused(add, boot_pattern=r"(a)\1")


def test_a_pattern_that_backtracks_forever_in_python_is_matched_in_linear_time():
    """`(.+)+X` on a long line without an X never ends with Python's re (the agent's loop would stall
    and the node fence itself); RE2 answers at once, so this test ends well inside its time limit."""
    from hostagent.node.bootpattern import BootPattern
    assert add(boot_pattern="(.+)+X").boot_pattern == "(.+)+X"
    attack = BootPattern("(.+)+X")
    assert not attack.search("a" * 200_000)
    assert attack.search("a" * 1000 + "X")


def test_a_boot_timeout_is_above_0_at_most_an_hour_and_needs_a_pattern():
    for bad in (0, -5, 3601, "90", True):
        assert f"boot timeout {bad!r} is not a number of seconds above 0 and at most 3600" in \
            refused(add, boot_pattern="login:", boot_timeout_s=bad)
    assert "a boot timeout needs a boot pattern (--boot-pattern REGEX)" in refused(add, boot_timeout_s=60)


def test_a_boot_pattern_needs_the_serial_console():
    assert "a boot pattern is matched against the serial console, which the instance's hvparams turn off" in \
        refused(add, boot_pattern="login:", hvparams={"serial_console": "no"})


def test_auto_failover_needs_a_replicated_template():
    message = refused(add, auto_failover=True)
    assert "auto failover needs a replicated disk template" in message and "a 'file' instance" in message
    assert add(auto_failover=False).auto_failover is False
    assert "auto failover 'yes' is not true, false or null" in refused(add, auto_failover="yes")
    assert modify("db1", auto_failover=None)["auto_failover"] is None


def test_after_must_name_existing_instances_at_add():
    assert "after: no instance named 'cache9' (instances: app1, db1, web1)" in refused(add, after=["cache9"])
    assert add(after=["db1", "db1"]).after == ["db1"]


def test_modify_changes_only_what_is_given():
    new = modify("app1", priority="critical", boot_pattern="login:")
    assert (new["priority"], new["boot_pattern"], new["boot_timeout_s"], new["after"]) == \
        ("critical", "login:", 0.0, ["db1"])


def test_modify_refuses_after_naming_itself_a_missing_instance_or_closing_a_cycle():
    assert "instance 'app1' cannot start after itself" in modify_refused("app1", after=["app1"])
    assert "after: no instance named 'gone1'" in modify_refused("app1", after=["gone1"])
    assert "after: db1 -> web1 -> app1 -> db1 is a cycle: each would wait for the next forever" in \
        modify_refused("db1", after=["web1"])
    assert modify("web1", after=[])["after"] == []


def test_a_refused_modify_reports_every_problem_and_changes_nothing():
    before = copy.deepcopy(RECORDS)
    message = modify_refused("web1", priority="urgent", boot_pattern="(", auto_failover=True)
    assert "priority 'urgent' is not one of critical, high, normal, low" in message
    assert "boot pattern '(' is not an RE2 regular expression" in message
    assert "auto failover needs a replicated disk template" in message
    assert RECORDS == before


def test_clearing_the_boot_pattern_clears_its_timeout_and_a_timeout_alone_keeps_the_pattern():
    with_check = record("web1", boot_pattern="login:", boot_timeout_s=60.0)
    cleared = check_modify(with_check, {"boot_pattern": ""}, RECORDS, HV)
    assert (cleared["boot_pattern"], cleared["boot_timeout_s"]) == ("", 0.0)
    longer = check_modify(with_check, {"boot_timeout_s": 300}, RECORDS, HV)
    assert (longer["boot_pattern"], longer["boot_timeout_s"]) == ("login:", 300.0)
    assert "a boot timeout needs a boot pattern" in refused(check_modify, with_check,
                                                            {"boot_pattern": "", "boot_timeout_s": 5}, RECORDS, HV)


def test_modify_refuses_unknown_fields_and_an_empty_request():
    assert "cannot modify disks of an instance; `instance modify` changes priority, after, boot_pattern, " \
           "boot_timeout_s, auto_failover, memory, vcpus, hvparams, osparams" in modify_refused("web1", disks=[])
    assert "nothing to change for instance 'web1'" in modify_refused("web1")


def test_modify_memory_vcpus_and_parameters():
    new = modify("db1", memory="1G", vcpus=2, hvparams={"shutdown_timeout_s": 30}, osparams={"suite": "bookworm"})
    assert (new["memory_mib"], new["vcpus"], new["hvparams"], new["osparams"]) == \
        (1024, 2, {"shutdown_timeout_s": 30}, {"suite": "bookworm"})
    reset = check_modify({**RECORDS[0], "hvparams": {"shutdown_timeout_s": 30, "vnc": "localhost"}},
                         {"hvparams": {"vnc": None}}, RECORDS, HV)
    assert reset["hvparams"] == {"shutdown_timeout_s": 30}  # null: back to the cluster's default
    problems = modify_refused("db1", memory="lots", vcpus=0, hvparams={"accel": "warp"}, osparams={"x": "$(id)"})
    assert "memory: 'lots' is not a size" in problems and "vcpus: 0 is not a number of virtual CPUs (1-255)" in problems
    assert "accel" in problems and "osparams: x:" in problems


def test_more_memory_than_the_nodes_can_promise_is_named_with_the_node():
    view = ClusterView(cluster_hv=HV, nodes={"n1": NODE}, reports={"n1": REPORT},
                       instances={r["name"] for r in RECORDS}, used_macs=set(),
                       records=tuple({**r, "admin_state": "up"} for r in RECORDS))
    db1 = {**RECORDS[0], "admin_state": "up"}
    assert check_resources(db1, {**db1, "memory_mib": 2048}, view, now=0) == []
    short = check_resources(db1, {**db1, "memory_mib": 8192}, view, now=0)
    assert len(short) == 1 and "n1: only" in short[0] and "memory free" in short[0], short
    assert check_resources(db1, {**db1, "memory_mib": 64}, view, now=0) == []  # less never needs a check


def test_a_running_instance_keeps_what_needs_a_restart_pending_until_its_next_start():
    inst = {**RECORDS[0], "vcpus": 1, "priority": "normal"}
    wanted = {**inst, "memory_mib": 1024, "vcpus": 2, "priority": "high"}
    running = pending.split(inst, wanted, running=True)
    assert (running["memory_mib"], running["vcpus"], running["priority"]) == (128, 1, "high")
    assert running["pending"] == {"memory_mib": 1024, "vcpus": 2}
    assert pending.effective(running)["memory_mib"] == 1024
    assert "pending" not in pending.split(inst, wanted, running=False)
    back = pending.split(running, {**pending.effective(running), "memory_mib": 128}, running=True)
    assert back["pending"] == {"vcpus": 2}  # asked back to what runs: nothing pending for it
    applied, changed = pending.apply(running)
    assert (applied["memory_mib"], applied["vcpus"], "pending" in applied) == (1024, 2, False)
    assert changed == {"memory_mib": (128, 1024), "vcpus": (1, 2)}


def test_modified_kernel_paths_stay_in_the_nodes_kernel_directories():
    view = ClusterView(cluster_hv=HV, nodes={"n1": NODE}, reports={"n1": {**REPORT, "kernel_dirs": ["/boot"]}},
                       instances={r["name"] for r in RECORDS}, used_macs=set(), records=RECORDS)
    db1 = RECORDS[0]
    check_kernel(db1, {**db1, "hvparams": {"kernel_path": "/boot/vmlinuz"}}, view)
    with pytest.raises(BadRequest, match="/etc/shadow"):
        check_kernel(db1, {**db1, "hvparams": {"kernel_path": "/boot/vmlinuz", "initrd_path": "/etc/shadow"}}, view)
