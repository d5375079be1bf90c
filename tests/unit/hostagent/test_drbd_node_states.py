"""A drbd primary's disks in the report's `mirrors` words (the mirror template's), from the kernel's states, so the
master's replica record treats both replicated templates alike (hostagent.master.decide.replicas)."""

from __future__ import annotations

from storage.drbd import minor_state
from storage.drbdproc import MinorState
from storage.drbdstatus import PeerState, ResourceState

from hostagent import model
from hostagent.master.decide import replicas
from hostagent.node.drbdnode import disk_state


def minor(connection: str, disk: str = "UpToDate", peer_disk: str = "UpToDate", **extra) -> MinorState:
    return MinorState(3, connection, "Primary", "Secondary", disk, peer_disk, extra.pop("oos", 0), **extra)


def test_connected_and_both_up_to_date_is_in_sync_and_makes_the_record_in_sync() -> None:
    state = disk_state(0, minor("Connected"), gen=4)
    assert (state["status"], state["percent"], state["gen"]) == ("in_sync", 100.0, 4)
    record = replicas.judge({"gen": 4, "in_sync": False}, [state], report_time=10.0, now=11.0)
    assert record is not None and record["in_sync"]


def test_a_resync_shows_the_kernels_percent_eta_and_what_is_left() -> None:
    state = disk_state(0, minor("SyncSource", peer_disk="Inconsistent", oos=65088, percent=11.8, eta_s=81.0,
                                speed_kib_s=448), gen=4)
    assert (state["status"], state["percent"], state["eta_s"], state["remaining_mib"]) == ("syncing", 11.8, 81.0, 63)
    assert replicas.judge({"gen": 4, "in_sync": True}, [state], 10.0, 11.0)["in_sync"] is False


def test_a_lost_peer_is_disconnected_and_a_refused_connection_points_at_verify() -> None:
    away = disk_state(0, minor("WFConnection", peer_disk="Outdated", oos=2048), gen=4)
    assert (away["status"], away["remaining_mib"]) == ("disconnected", 2)
    assert "WFConnection" in away["error"] and "verify" not in away["error"]
    assert "cluster verify" in disk_state(0, minor("StandAlone", peer_disk="DUnknown"), gen=4)["error"]


def test_a_state_under_an_older_generation_never_makes_the_record_in_sync() -> None:
    assert replicas.judge({"gen": 5, "in_sync": False}, [disk_state(0, minor("Connected"), gen=4)], 10.0, 11.0) is None


def test_drbd_9s_status_reads_as_the_same_minor_state() -> None:
    peer = PeerState("n2", 1, "Connected", "Secondary", "SyncSource", "Inconsistent", 40.0, 12.0)
    state = minor_state(ResourceState("corral-db1-0", "Primary", "UpToDate", (peer,), minor=7))
    assert state is not None and (state.minor, state.connection, state.percent, state.eta_s) == (
        7, "SyncSource", 40.0, 12.0)
    established = PeerState("n2", 1, "Connected", "Secondary", "Established", "UpToDate", 100.0, None)
    synced = minor_state(ResourceState("corral-db1-0", "Primary", "UpToDate", (established,), minor=7))
    assert synced is not None and synced.in_sync
    assert minor_state(ResourceState("corral-db1-0", "Primary", "UpToDate", (), minor=7)) is None


def test_a_metadata_volume_is_made_with_room_and_holds_at_most_what_its_bitmap_covers() -> None:
    for size_mib in (64, 1024, 100 * 1024, 2 * 2**20):
        assert model.drbd_max_mib(model.drbd_meta_mib(size_mib)) >= 4 * size_mib, size_mib
    # 4 MiB: 36 KiB of superblock and activity log, the rest a bit per 4 KiB of data
    assert 126 * 1024 < model.drbd_max_mib(4) < (4 * 2**20 - 36 * 1024) * 8 * 4096 // 2**20
