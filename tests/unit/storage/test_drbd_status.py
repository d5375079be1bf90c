"""DRBD 9 status parsers (pure; no DRBD needed).

The samples follow DRBD 9's documented `drbdsetup status --json` and
`drbdsetup events2` output, as seen in public fixtures such as
ClusterLabs/ha_cluster_exporter's test/fake_drbdsetup.sh (captured from a
SLE 15 DRBD 9 system). They are hand-written in that shape, since this
machine has no DRBD kernel module; the field names and the `key:value`
form of events2 were checked against the format strings of the installed
drbdsetup (drbd-utils 9.22).
"""

from __future__ import annotations

import json

import pytest

from storage.drbdstatus import (
    DrbdStatusError,
    PeerState,
    ResourceState,
    parse_events2,
    parse_status_json,
)

# `drbdsetup status --json --statistics` on n1: primary, n2 in sync.
JSON_IN_SYNC = """\
[
{
  "name": "corral-web1-0",
  "node-id": 0,
  "role": "Primary",
  "suspended": false,
  "write-ordering": "flush",
  "devices": [
    {
      "volume": 0,
      "minor": 3,
      "disk-state": "UpToDate",
      "client": false,
      "quorum": true,
      "size": 1048576,
      "read": 20451,
      "written": 88412,
      "al-writes": 31,
      "bm-writes": 0,
      "upper-pending": 0,
      "lower-pending": 0
    } ],
  "connections": [
    {
      "peer-node-id": 1,
      "name": "n2",
      "connection-state": "Connected",
      "congested": false,
      "peer-role": "Secondary",
      "ap-in-flight": 0,
      "rs-in-flight": 0,
      "peer_devices": [
        {
          "volume": 0,
          "replication-state": "Established",
          "peer-disk-state": "UpToDate",
          "peer-client": false,
          "resync-suspended": "no",
          "received": 0,
          "sent": 88412,
          "out-of-sync": 0,
          "pending": 0,
          "unacked": 0,
          "has-sync-details": false,
          "has-online-verify-details": false,
          "percent-in-sync": 100.00
        } ]
    } ]
}
]
"""

# The same resource during a resync to n2, with sync details: 12,288,000 KiB
# left, 204,800 sectors (100 MiB) done in the last 1,000 ms -> 120 s.
RESYNC_DETAILS = {
    "has-sync-details": True,
    "percent-in-sync": 45.2,
    "out-of-sync": 12288000,
    "rs-total": 22423358,
    "rs-dt-start-ms": 98000,
    "rs-paused-ms": 0,
    "rs-dt0-ms": 1000,
    "rs-db0-sectors": 204800,
    "rs-dt1-ms": 20000,
    "rs-db1-sectors": 2048000,
    "rs-failed": 0,
    "rs-same-csum": 0,
    "estimated-seconds-to-finish": 130,
}

# events2 --now --statistics on n1, initial state: resyncing to n2.
EVENTS_RESYNC = """\
exists resource name:corral-web1-0 role:Primary suspended:no force-io-failures:no may_promote:no promotion_score:10102 write-ordering:flush
exists connection name:corral-web1-0 peer-node-id:1 conn-name:n2 connection:Connected role:Secondary congested:no ap-in-flight:0 rs-in-flight:4096
exists device name:corral-web1-0 volume:0 minor:3 backing_dev:/dev/vg/corral-web1-disk0 disk:UpToDate client:no quorum:yes size:22423358 read:1250 written:80100 al-writes:12 bm-writes:4 upper-pending:0 lower-pending:0 al-suspended:no blocked:no
exists peer-device name:corral-web1-0 peer-node-id:1 conn-name:n2 volume:0 replication:SyncSource peer-disk:Inconsistent peer-client:no resync-suspended:no received:0 sent:10135358 out-of-sync:12288000 pending:0 unacked:2 done:45.20 rs-total:22423358 rs-dt-start-ms:98000 rs-paused-ms:0 rs-dt0-ms:1000 rs-db0-sectors:204800 rs-dt1-ms:20000 rs-db1-sectors:2048000 rs-failed:0 rs-same-csum:0 want:0.00 dbdt0:100.00 dbdt1:50.00 eta:130
exists path name:corral-web1-0 peer-node-id:1 conn-name:n2 local:ipv4:127.0.0.1:11000 peer:ipv4:127.0.0.2:11000 established:yes
exists -
"""

# events2 --now on n2 after n1 went away: n2 outdated itself, waits for n1.
EVENTS_CONNECTING = """\
exists resource name:corral-web1-0 role:Secondary suspended:no force-io-failures:no may_promote:no promotion_score:0 write-ordering:flush
exists connection name:corral-web1-0 peer-node-id:0 conn-name:n1 connection:Connecting role:Unknown
exists device name:corral-web1-0 volume:0 minor:3 disk:Outdated client:no quorum:yes
exists peer-device name:corral-web1-0 peer-node-id:0 conn-name:n1 volume:0 replication:Off peer-disk:DUnknown peer-client:no resync-suspended:no
exists -
"""


def with_peer_device(base: str, **changes: object) -> str:
    data = json.loads(base)
    data[0]["connections"][0]["peer_devices"][0].update(changes)
    return json.dumps(data)


def with_connection(base: str, **changes: object) -> str:
    data = json.loads(base)
    data[0]["connections"][0].update(changes)
    return json.dumps(data)


def only(states: list[ResourceState]) -> tuple[ResourceState, PeerState]:
    assert len(states) == 1
    assert len(states[0].peers) == 1
    return states[0], states[0].peers[0]


def test_json_connected_and_up_to_date_on_both_sides_is_in_sync() -> None:
    res, peer = only(parse_status_json(JSON_IN_SYNC))
    assert (res.name, res.role, res.disk, res.minor) == ("corral-web1-0", "Primary", "UpToDate", 3)
    assert peer == PeerState(
        node="n2", peer_node_id=1, connection="Connected", peer_role="Secondary",
        replication="Established", peer_disk="UpToDate", percent_in_sync=100.0, eta_s=None,
    )
    assert res.up_to_date and not res.syncing
    assert res.summary() == "in sync with n2"


def test_json_resync_reports_progress_and_eta_from_the_recent_rate() -> None:
    text = with_peer_device(
        JSON_IN_SYNC, **{"replication-state": "SyncSource", "peer-disk-state": "Inconsistent"},
        **RESYNC_DETAILS,
    )
    res, peer = only(parse_status_json(text))
    assert peer.percent_in_sync == pytest.approx(45.2)
    assert peer.eta_s == pytest.approx(120.0)
    assert res.syncing and not res.up_to_date
    assert res.summary() == "resyncing to n2: 45.2 %, about 2 min left"


def test_json_eta_uses_the_older_window_when_the_recent_one_is_empty() -> None:
    details = {**RESYNC_DETAILS, "rs-db0-sectors": 0}
    text = with_peer_device(JSON_IN_SYNC, **{"replication-state": "SyncSource"}, **details)
    _, peer = only(parse_status_json(text))
    # 2,048,000 sectors in 20 s = 50 MiB/s; 12,288,000 KiB take 240 s.
    assert peer.eta_s == pytest.approx(240.0)


def test_json_eta_falls_back_to_drbds_own_estimate_without_rate_windows() -> None:
    details = {k: v for k, v in RESYNC_DETAILS.items() if not k.startswith(("rs-d",))}
    text = with_peer_device(JSON_IN_SYNC, **{"replication-state": "SyncTarget"}, **details)
    res, peer = only(parse_status_json(text))
    assert peer.eta_s == 130
    assert res.summary() == "resyncing from n2: 45.2 %, about 2 min left"


def test_json_resync_without_sync_details_has_no_eta() -> None:
    text = with_peer_device(
        JSON_IN_SYNC, **{"replication-state": "SyncSource", "percent-in-sync": 45.2}
    )
    res, peer = only(parse_status_json(text))
    assert peer.eta_s is None
    assert res.summary() == "resyncing to n2: 45.2 %"


def test_json_paused_resync_has_no_eta() -> None:
    text = with_peer_device(
        JSON_IN_SYNC, **{"replication-state": "PausedSyncS"}, **RESYNC_DETAILS
    )
    res, peer = only(parse_status_json(text))
    assert peer.syncing and peer.eta_s is None
    assert res.summary() == "resync to n2 paused: 45.2 %"


def test_json_standalone_peer_is_disconnected_with_unknown_disk() -> None:
    text = with_connection(
        JSON_IN_SYNC, **{"connection-state": "StandAlone", "peer-role": "Unknown"}
    )
    text = with_peer_device(text, **{"replication-state": "Off", "peer-disk-state": "DUnknown"})
    res, peer = only(parse_status_json(text))
    assert (peer.connection, peer.peer_disk, peer.connected) == ("StandAlone", "DUnknown", False)
    assert not res.up_to_date
    assert res.summary() == "disconnected from n2 (StandAlone)"


def test_json_primary_with_outdated_peer_is_not_up_to_date() -> None:
    text = with_peer_device(JSON_IN_SYNC, **{"peer-disk-state": "Outdated"})
    res, peer = only(parse_status_json(text))
    assert peer.connected and not peer.in_sync and not peer.syncing
    assert not res.up_to_date
    assert res.summary() == "connected to n2, its disk is Outdated"


def test_json_connection_without_peer_devices_has_unknown_peer_disk() -> None:
    text = with_connection(JSON_IN_SYNC, **{"connection-state": "Connecting", "peer_devices": []})
    _, peer = only(parse_status_json(text))
    assert (peer.replication, peer.peer_disk, peer.percent_in_sync) == ("Off", "DUnknown", None)


def test_json_reports_the_lowest_volume_of_a_multi_volume_resource() -> None:
    data = json.loads(JSON_IN_SYNC)
    volume0 = data[0]["devices"][0]
    data[0]["devices"] = [{**volume0, "volume": 1, "minor": 4, "disk-state": "Failed"}, volume0]
    pdev0 = data[0]["connections"][0]["peer_devices"][0]
    data[0]["connections"][0]["peer_devices"] = [
        {**pdev0, "volume": 1, "peer-disk-state": "Diskless"}, pdev0,
    ]
    res, peer = only(parse_status_json(json.dumps(data)))
    assert (res.minor, res.disk, peer.peer_disk) == (3, "UpToDate", "UpToDate")


def test_json_resource_without_devices_or_connections() -> None:
    text = '[{"name": "r0", "role": "Secondary", "devices": [], "connections": []}]'
    [res] = parse_status_json(text)
    assert (res.disk, res.minor, res.peers) == ("DUnknown", None, ())
    assert res.summary() == "local disk DUnknown; no peer configured"


def test_json_no_resources_is_an_empty_list() -> None:
    assert parse_status_json("[]") == []


def test_json_that_does_not_parse_names_the_line() -> None:
    with pytest.raises(DrbdStatusError, match="line 3") as caught:
        parse_status_json('[\n{"name": "r0",\n "role": }]')
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"name": "r0"}', "top level"),
        ('[{"role": "Primary"}]', "resource[0].name"),
        ('[{"name": "r0", "role": "Primary", "devices": {}}]', "resource[0].devices"),
        (
            '[{"name": "r0", "role": "Primary", "connections": [{"name": "n2"}]}]',
            "resource[0].connections[0].peer-node-id",
        ),
        (
            '[{"name": "r0", "role": "Primary", "devices": [{"volume": "0"}]}]',
            "resource[0].devices.volume",
        ),
    ],
)
def test_json_with_a_wrong_field_names_the_field(text: str, where: str) -> None:
    with pytest.raises(DrbdStatusError) as caught:
        parse_status_json(text)
    assert caught.value.where == where
    assert where in str(caught.value)


def test_json_with_a_non_numeric_percentage_names_the_peer_device() -> None:
    text = with_peer_device(JSON_IN_SYNC, **{"percent-in-sync": "lots"})
    with pytest.raises(DrbdStatusError, match=r"connections\[0\]\.peer_devices\[0\]"):
        parse_status_json(text)


def test_events2_resync_reports_progress_and_eta() -> None:
    res, peer = only(parse_events2(EVENTS_RESYNC.splitlines()))
    assert (res.name, res.role, res.disk, res.minor) == ("corral-web1-0", "Primary", "UpToDate", 3)
    assert (peer.node, peer.peer_node_id, peer.connection, peer.peer_role) == (
        "n2", 1, "Connected", "Secondary",
    )
    assert (peer.replication, peer.peer_disk) == ("SyncSource", "Inconsistent")
    assert peer.percent_in_sync == pytest.approx(45.2)
    assert peer.eta_s == pytest.approx(120.0)
    assert res.summary() == "resyncing to n2: 45.2 %, about 2 min left"


def test_events2_folds_change_lines_in_order() -> None:
    lines = EVENTS_RESYNC.splitlines() + [
        "change peer-device name:corral-web1-0 peer-node-id:1 conn-name:n2 volume:0 "
        "replication:Established peer-disk:UpToDate",
        "change resource name:corral-web1-0 role:Secondary",
    ]
    res, peer = only(parse_events2(lines))
    assert (res.role, peer.replication, peer.peer_disk) == ("Secondary", "Established", "UpToDate")
    assert peer.eta_s is None
    assert res.up_to_date
    assert res.summary() == "in sync with n2"


def test_events2_connecting_peer_with_outdated_local_disk() -> None:
    res, peer = only(parse_events2(EVENTS_CONNECTING.splitlines()))
    assert (res.role, res.disk) == ("Secondary", "Outdated")
    assert (peer.node, peer.connection, peer.peer_disk) == ("n1", "Connecting", "DUnknown")
    assert peer.percent_in_sync is None and peer.eta_s is None
    assert res.summary() == "local disk Outdated; disconnected from n1 (Connecting)"


def test_events2_standalone_after_a_disconnect() -> None:
    lines = EVENTS_RESYNC.splitlines() + [
        "change connection name:corral-web1-0 peer-node-id:1 conn-name:n2 connection:StandAlone",
        "change peer-device name:corral-web1-0 peer-node-id:1 conn-name:n2 volume:0 "
        "replication:Off peer-disk:DUnknown",
    ]
    res, _ = only(parse_events2(lines))
    assert res.summary() == "disconnected from n2 (StandAlone)"


def test_events2_destroy_removes_the_object_and_what_it_holds() -> None:
    lines = EVENTS_RESYNC.splitlines() + [
        "destroy peer-device name:corral-web1-0 peer-node-id:1 conn-name:n2 volume:0",
        "destroy connection name:corral-web1-0 peer-node-id:1 conn-name:n2",
    ]
    [res] = parse_events2(lines)
    assert res.peers == ()
    lines += [
        "destroy device name:corral-web1-0 volume:0 minor:3",
        "destroy resource name:corral-web1-0",
    ]
    assert parse_events2(lines) == []


def test_events2_destroying_a_connection_forgets_its_peer_devices() -> None:
    lines = EVENTS_RESYNC.splitlines() + [
        "destroy connection name:corral-web1-0 peer-node-id:1 conn-name:n2",
        "create connection name:corral-web1-0 peer-node-id:1 conn-name:n2 "
        "connection:StandAlone role:Unknown",
    ]
    _, peer = only(parse_events2(lines))
    assert (peer.replication, peer.peer_disk, peer.percent_in_sync) == ("Off", "DUnknown", None)


def test_events2_destroy_of_an_unknown_object_is_harmless() -> None:
    assert parse_events2(["destroy device name:gone volume:0 minor:9"]) == []


def test_events2_rename_keeps_the_resource_state() -> None:
    lines = EVENTS_CONNECTING.splitlines() + ["rename resource name:corral-web1-0 new_name:r9"]
    [res] = parse_events2(lines)
    assert (res.name, res.disk) == ("r9", "Outdated")


def test_events2_accepts_equals_for_identity_keys() -> None:
    lines = [
        "exists resource name=r0 role:Primary suspended:no",
        "exists connection name=r0 peer-node-id=1 conn-name=n2 connection:Connected role:Secondary",
        "exists device name=r0 volume=0 minor=0 disk:UpToDate client:no quorum:yes",
        "exists peer-device name=r0 peer-node-id=1 conn-name=n2 volume=0 replication:SyncSource "
        "peer-disk:Inconsistent peer-client:no resync-suspended:no done:45.20",
        "exists -",
    ]
    res, peer = only(parse_events2(lines))
    assert (res.name, res.minor, peer.node, peer.percent_in_sync) == ("r0", 0, "n2", 45.2)
    assert res.summary() == "resyncing to n2: 45.2 %"


def test_events2_takes_the_new_value_of_an_old_to_new_change() -> None:
    lines = EVENTS_CONNECTING.splitlines() + [
        "change connection name:corral-web1-0 peer-node-id:0 conn-name:n1 "
        "connection:Connecting->Connected role:Unknown->Primary",
    ]
    _, peer = only(parse_events2(lines))
    assert (peer.connection, peer.peer_role) == ("Connected", "Primary")


def test_events2_skips_timestamps_blank_lines_paths_and_helpers() -> None:
    lines = [
        "2024-03-01T10:15:02.123456+01:00 " + line for line in EVENTS_CONNECTING.splitlines()
    ] + [
        "",
        "call helper name:corral-web1-0 peer-node-id:0 conn-name:n1 volume:0 "
        "helper:before-resync-target",
        "response helper name:corral-web1-0 peer-node-id:0 conn-name:n1 volume:0 "
        "helper:before-resync-target status:0",
        "exists quorum-gadget name:corral-web1-0 whatever:yes",
    ]
    res, _ = only(parse_events2(lines))
    assert res.disk == "Outdated"


def test_events2_change_before_exists_creates_the_object() -> None:
    res, peer = only(parse_events2([
        "change connection name:r0 peer-node-id:2 conn-name:n3 connection:Connecting",
    ]))
    assert (res.role, res.disk, peer.node, peer.connection) == (
        "Unknown", "DUnknown", "n3", "Connecting",
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("exist resource name:r0 role:Primary", "unknown event 'exist'"),
        ("exists", "names no object"),
        ("exists resource role:Primary", "missing name"),
        ("exists connection name:r0 conn-name:n2", "missing peer-node-id"),
        ("exists device name:r0 volume:zero", "volume 'zero' is not a whole number"),
        ("exists resource name:r0 role Primary", "'role' is not key:value"),
        ("exists device name:r0 volume:0 minor:x3", "minor 'x3'"),
        (
            "exists peer-device name:r0 peer-node-id:1 volume:0 replication:SyncSource done:lots",
            "'lots' is not a number",
        ),
    ],
)
def test_events2_malformed_lines_name_the_line_and_field(line: str, message: str) -> None:
    lines = ["exists resource name:r0 role:Primary", line]
    with pytest.raises(DrbdStatusError, match=message) as caught:
        parse_events2(lines)
    assert isinstance(caught.value, ValueError)
    assert caught.value.where.startswith("line 2")


@pytest.mark.parametrize(
    ("eta_s", "words"), [(40.0, "about 40 s left"), (11100.0, "about 3 h 5 min left")]
)
def test_summary_rounds_the_eta_to_operator_units(eta_s: float, words: str) -> None:
    peer = PeerState(
        node="n2", peer_node_id=1, connection="Connected", peer_role="Secondary",
        replication="SyncTarget", peer_disk="UpToDate", percent_in_sync=99.0, eta_s=eta_s,
    )
    assert peer.summary() == f"resyncing from n2: 99.0 %, {words}"


# `drbdsetup events2 --now --statistics` from drbd-utils 9.22 on Debian 12's DRBD 8.4.11 module (a node VM, during
# the initial sync): the same line format as DRBD 9's, the peer named "peer", no progress fields.
EVENTS2_84 = """\
exists resource name:corral-t-0 role:Primary suspended:no write-ordering:flush
exists connection name:corral-t-0 peer-node-id:0 conn-name:peer connection:Connected role:Secondary congested:no
exists device name:corral-t-0 volume:0 minor:0 disk:UpToDate size:65536 read:540 written:0 al-writes:8 bm-writes:0 \
upper-pending:0 lower-pending:0 al-suspended:no blocked:no
exists peer-device name:corral-t-0 peer-node-id:0 conn-name:peer volume:0 replication:SyncSource \
peer-disk:Inconsistent resync-suspended:no received:0 sent:540 out-of-sync:64996 pending:0 unacked:0
exists -
"""


def test_events2_of_a_drbd_84_module_parses_as_drbd_9s_without_progress() -> None:
    [res] = parse_events2(EVENTS2_84.splitlines())
    assert (res.name, res.role, res.disk, res.minor) == ("corral-t-0", "Primary", "UpToDate", 0)
    [peer] = res.peers
    assert (peer.connection, peer.peer_role, peer.replication, peer.peer_disk) == \
        ("Connected", "Secondary", "SyncSource", "Inconsistent")
    assert peer.percent_in_sync is None and not res.up_to_date and res.syncing
