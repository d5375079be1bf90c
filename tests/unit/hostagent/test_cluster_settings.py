"""`cluster modify` input checks: every problem named with what would be accepted."""

from hostagent.master.cluster_settings import MODIFIABLE, check_changes, stored


def test_known_settings_with_good_values_are_accepted():
    assert check_changes({"auto_failover": True, "max_lost_nodes": 2, "failback_after_s": 300}) == []
    assert check_changes({"max_lost_nodes": None}) == [], "None goes back to the default"


def test_each_bad_value_is_named_with_what_it_must_be():
    problems = check_changes({"auto_failover": "yes", "max_lost_nodes": 0, "failback_after_s": -5})
    assert len(problems) == 3
    assert any("auto_failover must be yes or no" in p and "'yes'" in p for p in problems)
    assert any("max_lost_nodes must be a whole number >= 1" in p for p in problems)
    assert any("failback_after_s must be seconds" in p for p in problems)


def test_unknown_settings_and_empty_requests_are_refused():
    known = ", ".join(MODIFIABLE)
    assert known.startswith("auto_failover, max_lost_nodes, failback_after_s, default_memory")
    assert check_changes({"fencing": "off"}) == [f"unknown cluster setting 'fencing' (known: {known})"]
    assert check_changes({}) == [f"nothing to change (settings: {known})"]
    assert check_changes({"default_memory": "lots", "default_vcpus": 0}) == [
        "default_memory: 'lots' is not a size; use a number of MiB or a number with a unit, e.g. 512M, 1G, 1.5G, 2T",
        "default_vcpus must be a whole number from 1 to 255: the vCPUs of new instances that do not give "
        "theirs, got 0"]
    assert check_changes({"max_lost_nodes": True}) != [], "a bool is not a count"


def test_settings_cluster_init_made_can_change_and_merge():
    assert check_changes({"candidate_pool_size": 4, "sync_rate_mib_s": -1, "restart_backoff_s": 0,
                          "enabled_disk_templates": ["file", "floppy"], "hvparams": {"accel": "warp"},
                          "policy": {"max_memory": "lots", "max_vcpus": 0, "min_memory": "2G", "speed": 1}}) != []
    assert check_changes({"candidate_pool_size": 5, "sync_rate_mib_s": 50, "restart_backoff_s": 5,
                          "enabled_disk_templates": ["file"], "hvparams": {"shutdown_timeout_s": 30, "vnc": None},
                          "policy": {"max_memory": "4G", "max_vcpus": 4, "max_disk_size": ""}}) == []
    cluster = {"hvparams": {"accel": "tcg", "vnc": "localhost"}, "policy": {"max_disk_mib": 1024, "max_vcpus": 8}}
    out = stored({"hvparams": {"vnc": None, "shutdown_timeout_s": 30}, "policy": {"max_vcpus": 4, "max_disk_size": ""},
                  "default_memory": "1G"}, cluster)
    assert out == {"hvparams": {"accel": "tcg", "shutdown_timeout_s": 30}, "policy": {"max_vcpus": 4},
                   "default_memory_mib": 1024}
