"""Encoding of requests and decoding of replies captured from etcd 3.4.23's JSON gateway."""

from __future__ import annotations

import base64
import json

import pytest

from election.etcd import (
    KV,
    Compacted,
    Compare,
    EtcdUnavailable,
    Op,
    WatchEvent,
    parse_txn_reply,
    parse_watch_message,
    prefix_range_end,
)

ENDPOINT = "http://127.0.0.1:2379"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_prefix_range_end_follows_etcd_convention() -> None:
    assert prefix_range_end(b"/corral/") == b"/corral0"
    assert prefix_range_end(b"a\xff\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\x00"
    assert prefix_range_end(b"") == b"\x00"


def test_compares_encode_target_operator_and_operand() -> None:
    assert Compare.create_revision("/k", "=", 0).to_json() == {
        "key": b64("/k"),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }
    assert Compare.value("/k", "!=", b"v").to_json() == {
        "key": b64("/k"),
        "target": "VALUE",
        "result": "NOT_EQUAL",
        "value": b64("v"),
    }
    assert Compare.lease("/k", "=", 0x1F).to_json()["lease"] == "31"
    assert Compare.mod_revision("/k", ">", 7).to_json()["result"] == "GREATER"
    assert Compare.version("/k", "<", 2).to_json()["target"] == "VERSION"


def test_ops_encode_puts_deletes_and_ranges() -> None:
    assert Op.put("/k", b"v").to_json() == {"request_put": {"key": b64("/k"), "value": b64("v")}}
    assert Op.put("/k", b"v", lease=5).to_json()["request_put"]["lease"] == "5"
    assert Op.delete("/k").to_json() == {"request_delete_range": {"key": b64("/k")}}
    assert Op.delete_prefix("/p/").to_json() == {
        "request_delete_range": {"key": b64("/p/"), "range_end": b64("/p0")}
    }
    assert Op.get("/k").to_json() == {"request_range": {"key": b64("/k")}}
    assert Op.get_prefix("/p/").to_json()["request_range"]["range_end"] == b64("/p0")


def test_txn_reply_decodes_each_branch_response() -> None:
    captured = (
        '{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"3",'
        '"raft_term":"2"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}},'
        '{"response_delete_range":{"header":{"revision":"3"},"deleted":"2"}},{"response_range":{"header":'
        '{"revision":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2",'
        '"value":"eA==","lease":"7"}],"count":"1"}},{"response_range":{"header":{"revision":"3"}}}]}'
    )
    result = parse_txn_reply(json.loads(captured))
    assert result.succeeded and result.revision == 3
    assert result.responses == [None, 2, [KV("foo", b"x", 2, 3, 2, 7)], []]
    failed = parse_txn_reply(json.loads('{"header":{"revision":"9"}}'))
    assert not failed.succeeded and failed.revision == 9 and failed.responses == []


def test_watch_creation_acknowledgement_is_not_a_batch() -> None:
    captured = (
        '{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952",'
        '"revision":"5","raft_term":"2"},"created":true}}'
    )
    assert parse_watch_message(json.loads(captured), ENDPOINT) is None


def test_watch_events_decode_puts_and_deletes_with_the_header_revision() -> None:
    captured = (
        '{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952",'
        '"revision":"6","raft_term":"3"},"events":[{"kv":{"key":"Zm9v","create_revision":"2",'
        '"mod_revision":"5","version":"4","value":"eQ=="}},{"type":"DELETE","kv":{"key":"Zm9v",'
        '"mod_revision":"6"}}]}}'
    )
    batch = parse_watch_message(json.loads(captured), ENDPOINT)
    assert batch is not None
    assert batch.revision == 6
    assert batch.events == [
        WatchEvent("put", KV("foo", b"y", 2, 5, 4, 0)),
        WatchEvent("delete", KV("foo", b"", 0, 6, 0, 0)),
    ]


def test_watch_progress_notification_is_an_empty_batch_with_a_revision() -> None:
    captured = (
        '{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952",'
        '"revision":"6","raft_term":"3"}}}'
    )
    assert parse_watch_message(json.loads(captured), ENDPOINT) == parse_watch_message(
        {"result": {"header": {"revision": "6"}, "events": []}}, ENDPOINT
    )
    batch = parse_watch_message(json.loads(captured), ENDPOINT)
    assert batch is not None and batch.revision == 6 and batch.events == []


def test_a_split_catch_up_batch_only_vouches_for_its_last_event() -> None:
    events = [{"kv": {"key": b64(f"/k{i}"), "mod_revision": str(10 + i), "value": ""}} for i in range(1000)]
    message = {"result": {"header": {"revision": "5000"}, "events": events}}
    batch = parse_watch_message(message, ENDPOINT)
    assert batch is not None and batch.revision == 1009


def test_watch_cancelled_by_compaction_raises_compacted() -> None:
    captured = (
        '{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952",'
        '"raft_term":"2"},"canceled":true,"compact_revision":"4"}}'
    )
    with pytest.raises(Compacted) as raised:
        parse_watch_message(json.loads(captured), ENDPOINT)
    assert raised.value.compact_revision == 4


def test_watch_stream_error_after_quorum_loss_raises_etcd_unavailable() -> None:
    captured = (
        '{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader",'
        '"http_status":"Service Unavailable"}}'
    )
    with pytest.raises(EtcdUnavailable) as raised:
        parse_watch_message(json.loads(captured), ENDPOINT)
    assert raised.value.endpoints == [ENDPOINT]
    assert "no leader" in raised.value.reason
