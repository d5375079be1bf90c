"""Corral's LUXI (hostagent.luxi): the framing, the query answers hbal reads, hbal's opcodes as Corral's
instance actions, the job statuses it polls, and the socket refusing what it does not serve without harm."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from hostagent.luxi import jobs, opcodes, query, wire
from hostagent.luxi.server import LuxiServer

HBAL_NODE_FIELDS = ["name", "mtotal", "mnode", "mfree", "dtotal", "dfree", "ctotal", "cnos", "offline", "drained",
                    "vm_capable", "ndp/spindle_count", "group.uuid", "tags", "ndp/exclusive_storage", "sptotal",
                    "spfree", "ndp/cpu_speed"]
HBAL_INSTANCE_FIELDS = ["name", "disk_usage", "be/memory", "be/vcpus", "status", "pnode", "snodes", "tags",
                        "be/auto_balance", "disk_template", "be/spindle_use", "disk.sizes", "disk.spindles",
                        "forthcoming"]


def node(name: str, **changed: object) -> dict[str, object]:
    """A node as the RAPI's /2/nodes?bulk=1 gives it (the fields hbal reads)."""
    return {"name": name, "mtotal": 4096, "mnode": 512, "mfree": 3000, "dtotal": 10240, "dfree": 8000, "ctotal": 4,
            "cnos": 4, "offline": False, "drained": False, "vm_capable": True, "sptotal": None, "spfree": None,
            "ndparams": {"spindle_count": 1, "exclusive_storage": False, "cpu_speed": 1}, "group.uuid": "g-1",
            "tags": [], **changed}


def instance(name: str, **changed: object) -> dict[str, object]:
    return {"name": name, "disk_usage": 128, "beparams": {"memory": 128, "vcpus": 1, "auto_balance": True,
                                                          "spindle_use": 1},
            "status": "running", "pnode": "n1", "snodes": ["n2"], "tags": [], "disk_template": "drbd",
            "disk.sizes": [64], "disk.spindles": [None], **changed}


RECORDS = {"web1": {"name": "web1", "primary_node": "n1", "secondary_node": "n2", "admin_state": "up",
                    "disks": [{"size_mib": 64}]},
           "db1": {"name": "db1", "primary_node": "n1", "secondary_node": "n2", "admin_state": "down",
                   "disks": [{"size_mib": 64}]}}
MIGRATE = {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "web1", "allow_runtime_changes": False,
           "ignore_ipolicy": False, "cleanup": False, "allow_failover": True, "ignore_hvversions": True}
REPLACE = {"OP_ID": "OP_INSTANCE_REPLACE_DISKS", "instance_name": "web1", "early_release": False,
           "ignore_ipolicy": False, "mode": "replace_new_secondary", "disks": [], "remote_node": "n3"}


# ---- framing ---------------------------------------------------------------------------------------------------
def test_the_framer_hands_out_whole_messages_and_keeps_a_partial_one() -> None:
    framer = wire.Framer()
    assert framer.feed(b'{"a":1}\x03{"b"') == [b'{"a":1}'] and framer.pending
    assert framer.feed(b":2}\x03") == [b'{"b":2}'] and not framer.pending


def test_the_framer_refuses_a_message_over_the_limit_before_it_ends() -> None:
    framer = wire.Framer(limit=16)
    with pytest.raises(wire.WireError, match="longer than 16 bytes"):
        framer.feed(b"x" * 17)
    with pytest.raises(wire.WireError, match="longer than 16 bytes"):
        wire.Framer(limit=16).feed(b"x" * 20 + b"\x03")


@pytest.mark.parametrize("raw, said", [(b"not json", "not JSON"), (b"[1]", "JSON object"),
                                       (b'{"method": 3}', "JSON object"), (b'{"method": "Query", "args": 1}',
                                                                          "must be a list"),
                                       (b"[" * 40 + b"]" * 40, "nests deeper"), (b'{"method": "Q", "args": [NaN]}',
                                                                                 "not JSON")])
def test_a_request_that_is_not_luxi_is_refused_with_the_reason(raw: bytes, said: str) -> None:
    with pytest.raises(wire.WireError, match=said):
        wire.decode(raw)


def test_a_request_decodes_to_its_method_and_args_and_answers_are_framed() -> None:
    assert wire.decode(b'{"method":"QueryJobs","args":[[5],["status"]],"version":3}') == \
        wire.Request("QueryJobs", [[5], ["status"]])
    assert wire.decode(b'{"method":"X","args":["a \\" [[[ b"]}').args == ['a " [[[ b']  # brackets in strings
    assert json.loads(wire.success([1])[:-1]) == {"success": True, "result": [1]} and wire.success(1).endswith(b"\x03")
    assert json.loads(wire.failure("OpPrereqError", "no")[:-1]) == \
        {"success": False, "result": ["OpPrereqError", ["no", "wrong_input"]]}


# ---- queries ---------------------------------------------------------------------------------------------------
def test_a_node_query_answers_hbals_fields_with_the_rapis_values() -> None:
    got = query.answer("node", HBAL_NODE_FIELDS, None, [node("n1"), node("n2", mfree=2000)])
    assert [f["name"] for f in got["fields"]] == HBAL_NODE_FIELDS
    row = dict(zip(HBAL_NODE_FIELDS, got["data"][1]))
    assert row["name"] == [0, "n2"] and row["mfree"] == [0, 2000] and row["ndp/spindle_count"] == [0, 1]
    assert row["group.uuid"] == [0, "g-1"] and row["ndp/exclusive_storage"] == [0, False]
    assert row["sptotal"] == [query.RS_UNAVAIL, None]
    kinds = {f["name"]: f["kind"] for f in got["fields"]}
    assert kinds["name"] == "text" and kinds["mtotal"] == "number" and kinds["offline"] == "bool"


def test_an_instance_query_answers_hbals_fields_and_says_corral_has_nothing_forthcoming() -> None:
    got = query.answer("instance", HBAL_INSTANCE_FIELDS, None, [instance("web1")])
    row = dict(zip(HBAL_INSTANCE_FIELDS, got["data"][0]))
    assert row["be/memory"] == [0, 128] and row["snodes"] == [0, ["n2"]] and row["forthcoming"] == [0, False]
    assert row["disk.spindles"] == [0, [None]] and row["disk_usage"] == [0, 128]


def test_an_unknown_field_is_marked_unknown_and_an_offline_nodes_missing_figure_offline() -> None:
    got = query.answer("node", ["name", "no_such", "mfree"], None, [node("n3", offline=True, mfree=None)])
    assert got["data"] == [[[0, "n3"], [query.RS_UNKNOWN, None], [query.RS_OFFLINE, None]]]
    assert got["fields"][1]["kind"] == "unknown"


def test_a_query_filters_by_names_and_flags() -> None:
    items = [node("n1"), node("n2", drained=True), node("n3")]
    names = lambda flt: [row[0][1] for row in query.answer("node", ["name"], flt, items)["data"]]  # noqa: E731
    assert names(["|", ["=", "name", "n1"], ["=", "name", "n3"]]) == ["n1", "n3"]
    assert names(["!", ["?", "drained"]]) == ["n1", "n3"] and names(["&", ["!=", "name", "n1"]]) == ["n2", "n3"]
    with pytest.raises(query.QueryRefused, match="'=~'"):
        names(["=~", "name", "n.*"])


def test_queries_on_what_corral_does_not_serve_are_refused_by_name() -> None:
    with pytest.raises(query.QueryRefused, match="not on 'job'"):
        query.answer("job", ["id"], None, [])
    with pytest.raises(query.QueryRefused, match="list of names"):
        query.answer("node", "name", None, [])


# ---- opcodes ---------------------------------------------------------------------------------------------------
def test_hbals_migration_is_corrals_live_migration_as_the_rapi_sends_it() -> None:
    assert opcodes.step(MIGRATE, RECORDS) == opcodes.Step("migrate", "web1", opcodes.step(MIGRATE, RECORDS).params)
    assert opcodes.step({**MIGRATE, "target_node": "n3"}, RECORDS).params["node"] == "n3"


def test_a_stopped_instances_migration_is_a_failover_when_hbal_allows_it() -> None:
    assert opcodes.step({**MIGRATE, "instance_name": "db1"}, RECORDS).action == "failover"
    assert opcodes.step({**MIGRATE, "instance_name": "db1", "allow_failover": False}, RECORDS).action == "migrate"


def test_a_new_secondary_is_corrals_replace_secondary() -> None:
    got = opcodes.step(REPLACE, RECORDS)
    assert (got.action, got.instance, got.params) == ("replace-secondary", "web1", {"node": "n3"})


def test_a_failover_goes_to_the_secondary() -> None:
    op = {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "web1", "ignore_consistency": False}
    assert opcodes.step(op, RECORDS).action == "failover"
    assert opcodes.step({**op, "target_node": "n2"}, RECORDS).action == "failover"
    with pytest.raises(opcodes.OpcodeRefused, match="to its secondary \\(n2\\) only"):
        opcodes.step({**op, "target_node": "n3"}, RECORDS)


@pytest.mark.parametrize("op, said", [
    ({**MIGRATE, "cleanup": True}, "cleanup"),
    ({**MIGRATE, "mode": "non-live", "allow_failover": False}, "submit OP_INSTANCE_FAILOVER"),
    ({**REPLACE, "mode": "replace_on_secondary"}, "replace_new_secondary"),
    ({**MIGRATE, "instance_name": "ghost"}, "'ghost' is unknown"),
    ({**MIGRATE, "dry_run": True}, "no dry run"),
    ({"OP_ID": "OP_INSTANCE_REMOVE", "instance_name": "web1"}, "OP_INSTANCE_REMOVE is not supported"),
    ({"OP_ID": "OP_CLUSTER_DESTROY"}, "is not supported"),
    ("OP_INSTANCE_MIGRATE", "an object with an OP_ID"),
])
def test_what_corral_does_not_do_is_refused_saying_what_would(op: object, said: str) -> None:
    with pytest.raises(opcodes.OpcodeRefused, match=said):
        opcodes.step(op, RECORDS)


def test_a_job_is_refused_as_a_whole_if_one_opcode_is() -> None:
    assert [s.action for s in opcodes.job_steps([MIGRATE, REPLACE, MIGRATE], RECORDS)] == \
        ["migrate", "replace-secondary", "migrate"]
    with pytest.raises(opcodes.OpcodeRefused, match="OP_INSTANCE_REMOVE"):
        opcodes.job_steps([MIGRATE, {"OP_ID": "OP_INSTANCE_REMOVE", "instance_name": "web1"}], RECORDS)
    with pytest.raises(opcodes.OpcodeRefused, match="non-empty list"):
        opcodes.job_steps([], RECORDS)


# ---- one Corral job per Ganeti job ----------------------------------------------------------------------------
def test_hbals_job_is_the_moves_of_one_instance() -> None:
    assert opcodes.moves([MIGRATE, REPLACE, MIGRATE], RECORDS) == \
        ("web1", [{"action": "migrate"}, {"action": "replace-secondary", "node": "n3"}, {"action": "migrate"}])
    with pytest.raises(opcodes.OpcodeRefused, match="one instance per job"):
        opcodes.moves([MIGRATE, {**MIGRATE, "instance_name": "db1"}], RECORDS)
    failover = {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "web1", "ignore_consistency": True}
    with pytest.raises(opcodes.OpcodeRefused, match="--ignore-consistency"):
        opcodes.moves([failover], RECORDS)


def test_a_luxi_job_is_the_corral_job_in_ganetis_shape() -> None:
    record = {"id": 5, "op": "instance.moves", "status": "running", "created": 1.0, "started": 1.5, "ended": None,
              "args": {"steps": []}}
    got = jobs.single(record)
    assert jobs.pick(got, ["status", "id"]) == ["running", 5] and jobs.pick(None, ["status"]) is None


# ---- the socket ------------------------------------------------------------------------------------------------
async def ask(path: str, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\x03"), 5)
    writer.close()
    return answer


def test_the_socket_is_roots_and_refuses_the_unsupported_and_the_oversized_without_stalling(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = LuxiServer(SimpleNamespace(cfg=SimpleNamespace(run_dir=str(tmp_path), node_name="n1")))
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
            # a client that sends half a message and stalls holds up nobody else
            stalled: asyncio.StreamWriter
            _, stalled = await asyncio.open_unix_connection(server.path)
            stalled.write(b'{"method": "Query", "args": [')
            refused = json.loads((await ask(server.path, b'{"method": "DestroyCluster", "args": []}\x03'))[:-1])
            assert refused["success"] is False and refused["result"][0] == "OpPrereqError"
            assert "'DestroyCluster' is not supported" in refused["result"][1][0]
            garbage = json.loads((await ask(server.path, b"\xff\xfe\x03"))[:-1])
            assert garbage["success"] is False and "not JSON" in garbage["result"][1][0]
            oversized = await ask(server.path, b"[" + b" " * (wire.MAX_MESSAGE_BYTES + 10))
            assert b"longer than" in oversized
            await asyncio.wait_for(server.close(), 6)  # the stalled client does not hold the agent's stop
        finally:
            await server.close()
            stalled.close()
        assert not os.path.exists(server.path)
    asyncio.run(scenario())
