import pytest

from hostagent.config import ConfigError, load_config, parse_config


def test_minimal_config_gets_defaults(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[node]\nname = "n1"\naddress = "127.0.0.2"\n')
    cfg = load_config(str(path))
    assert (cfg.node_name, cfg.address, cfg.api_port) == ("n1", "127.0.0.2", 7947)
    assert cfg.socket == "/run/corral/agent.sock"
    assert cfg.file_storage == "/var/lib/corral/file-storage"


def test_every_problem_is_reported_at_once():
    raw = {"node": {"name": "N_1", "address": "not-an-ip"},
           "ports": {"api": 70000, "gossip": "x"},
           "paths": {"state_dir": "relative"},
           "bogus": {}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "agent.toml")
    text = str(err.value)
    assert "'N_1' is not a valid node name" in text
    assert "'not-an-ip' is not an IP address" in text
    assert "api = 70000 is not a TCP port" in text
    assert "ports.gossip: expected an integer" in text
    assert "'relative' must be an absolute path" in text
    assert "unknown section [bogus]" in text
    assert len(err.value.problems) == 6


def test_port_clash_with_a_default_is_refused():
    with pytest.raises(ConfigError, match="etcd_client and api both use port 2379"):
        parse_config({"node": {"name": "n1", "address": "127.0.0.1"}, "ports": {"api": 2379}})


def test_malformed_toml_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "missing.toml"))


def test_missing_required_keys_are_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"ports": {"api": 8000}})
    assert "missing required key 'name' in [node]" in str(err.value)
    assert "missing required key 'address' in [node]" in str(err.value)


def test_kernel_dirs_default_to_boot_and_the_guest_cache_and_must_be_absolute_directories_below_root():
    node = {"name": "n1", "address": "127.0.0.1"}
    assert parse_config({"node": node}).kernel_dirs == ("/boot", "/var/cache/corral/guest")
    assert parse_config({"node": node, "paths": {"kernel_dirs": ["/srv/kernels"]}}).kernel_dirs == ("/srv/kernels",)
    with pytest.raises(ConfigError) as err:
        parse_config({"node": node, "paths": {"kernel_dirs": ["/", "boot"]}})
    assert err.value.problems == [
        f"paths.kernel_dirs: {p!r} must be an absolute directory other than / (kernels and initrds are read from "
        "there, e.g. /boot)" for p in ("/", "boot")]


def test_master_lease_and_etcd_timing_default_to_a_lan_cluster():
    cfg = parse_config({"node": {"name": "n1", "address": "127.0.0.1"}})
    assert (cfg.master_lease_ttl_s, cfg.etcd_heartbeat_ms, cfg.etcd_election_timeout_ms) == (2, 50, 500)


@pytest.mark.parametrize("agent, problem", [
    ({"master_lease_ttl_s": 1}, "agent.master_lease_ttl_s must be at least 2 s"),
    ({"master_lease_ttl_s": 0}, "agent.master_lease_ttl_s must be at least 2 s"),
    ({"etcd_heartbeat_ms": 5}, "agent.etcd_heartbeat_ms must be 10-5000 ms, got 5"),
    ({"etcd_heartbeat_ms": 200}, "must be at least 5 times etcd_heartbeat_ms (1000)"),
    ({"etcd_election_timeout_ms": 1500},
     "agent.etcd_election_timeout_ms (1500) must be at most half of master_lease_ttl_s (2 s): the master must not "
     "lose its lease while etcd elects a leader; raise master_lease_ttl_s to at least 3 s"),
])
def test_bad_master_lease_or_etcd_timing_is_refused_with_what_to_change(agent, problem):
    with pytest.raises(ConfigError) as err:
        parse_config({"node": {"name": "n1", "address": "127.0.0.1"}, "agent": agent})
    assert len(err.value.problems) == 1 and problem in err.value.problems[0], err.value.problems


def test_slower_etcd_timing_is_accepted_with_a_longer_master_lease():
    cfg = parse_config({"node": {"name": "n1", "address": "127.0.0.1"},
                        "agent": {"etcd_heartbeat_ms": 400, "etcd_election_timeout_ms": 4000,
                                  "master_lease_ttl_s": 15}})
    assert (cfg.master_lease_ttl_s, cfg.etcd_election_timeout_ms) == (15, 4000)
