"""/proc/drbd of DRBD 8.4.11, captured in a node VM (Debian 12's kernel): parsed into per-minor states."""

from __future__ import annotations

import pytest

from storage.drbdproc import ProcDrbdError, parse_proc_drbd

HEAD = "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: F73C670A7EC572DB9CF3E5B \n\n"
SYNCING = HEAD + """ 3: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
    ns:448 nr:0 dw:0 dr:448 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:65088
\t[=>..................] sync'ed: 11.8% (65088/65536)K
\tfinish: 0:01:21 speed: 1,448 (448) K/sec
 4: cs:Unconfigured
 5: cs:WFConnection ro:Primary/Unknown ds:UpToDate/Outdated C r-----
    ns:65536 nr:0 dw:2048 dr:65536 al:9 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:2048
 6: cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate C r-----
    ns:0 nr:67584 dw:67584 dr:0 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
 7: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C s-----
    ns:0 nr:67584 dw:67584 dr:0 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
 8: cs:StandAlone ro:Primary/Unknown ds:UpToDate/DUnknown   s-----
    ns:2960 nr:0 dw:69632 dr:2201 al:20 bm:0 lo:0 pe:9 ua:0 ap:9 ep:1 wo:f oos:0
 9: cs:StandAlone ro:Primary/Unknown ds:UpToDate/Outdated   r-----
    ns:0 nr:0 dw:4096 dr:0 al:8 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:4096
"""


def test_a_running_resync_has_the_kernels_progress_eta_and_speed() -> None:
    state = parse_proc_drbd(SYNCING)[3]
    assert (state.connection, state.role, state.peer_role, state.disk, state.peer_disk) == (
        "SyncSource", "Primary", "Secondary", "UpToDate", "Inconsistent")
    assert (state.out_of_sync_kib, state.percent, state.eta_s, state.speed_kib_s) == (65088, 11.8, 81.0, 1448)
    assert state.syncing and not state.in_sync


def test_a_primary_whose_peer_is_away_counts_what_the_peer_misses() -> None:
    state = parse_proc_drbd(SYNCING)[5]
    assert (state.connection, state.peer_disk, state.out_of_sync_kib) == ("WFConnection", "Outdated", 2048)
    assert not state.in_sync and not state.syncing and state.percent is None


def test_connected_and_both_up_to_date_is_in_sync_and_unconfigured_minors_are_left_out() -> None:
    minors = parse_proc_drbd(SYNCING)
    assert sorted(minors) == [3, 5, 6, 7, 8, 9] and minors[6].in_sync


def test_a_primary_frozen_by_its_fencing_says_so() -> None:
    minors = parse_proc_drbd(SYNCING)
    assert minors[7].io_suspended and not minors[5].io_suspended and not minors[3].io_suspended


def test_a_standalone_minor_has_no_protocol_but_its_frozen_io_still_shows() -> None:
    """A cut-off primary back after a refused (split-brain) reconnection: StandAlone leaves the protocol blank."""
    minors = parse_proc_drbd(SYNCING)
    assert minors[8].io_suspended and minors[8].connection == "StandAlone"
    assert not minors[9].io_suspended and minors[9].out_of_sync_kib == 4096


def test_no_module_loaded_or_no_resources_is_no_minor() -> None:
    assert parse_proc_drbd(HEAD) == {}


def test_a_minor_without_roles_is_an_error_that_says_which() -> None:
    with pytest.raises(ProcDrbdError, match="minor 7"):
        parse_proc_drbd(HEAD + " 7: cs:Connected something else\n")
