"""What wakes a candidate to campaign: the master key's deletion seen in the config watch."""

from election.etcd import KV, WatchEvent

from hostagent import model
from hostagent.master.candidacy import master_lost


def event(kind: str, key: str) -> WatchEvent:
    return WatchEvent(type=kind, kv=KV(key=key, value=b"{}", create_revision=5, mod_revision=7, version=1, lease=0))


def test_the_master_keys_deletion_means_the_master_is_lost():
    assert master_lost([event("put", model.REPORTS + "n2"), event("delete", model.MASTER_KEY)])


def test_a_new_master_or_other_deletions_do_not():
    assert not master_lost([event("put", model.MASTER_KEY)])
    assert not master_lost([event("delete", model.REPORTS + "n1"), event("delete", model.HANDOVER_KEY)])
    assert not master_lost([])
