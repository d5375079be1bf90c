"""The `serf agent` command line and its secrets files (no serf process here)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from membership.agent import (InvalidGossipKey, keyring_json, new_gossip_key, serf_argv, serf_config,
                              validate_gossip_key, write_serf_secrets)

KEY = base64.b64encode(bytes(range(32))).decode()
BIND = "127.0.0.2:7946"
RPC = "127.0.0.2:7373"


def test_new_gossip_key_is_a_fresh_base64_32_byte_key() -> None:
    first, second = new_gossip_key(), new_gossip_key()

    validate_gossip_key(first)
    assert len(base64.b64decode(first)) == 32
    assert first != second


@pytest.mark.parametrize("length", [16, 24, 32])
def test_aes_key_lengths_serf_accepts_are_valid(length: int) -> None:
    validate_gossip_key(base64.b64encode(bytes(length)).decode())


@pytest.mark.parametrize(("key", "reason"), [
    ("", "empty"),
    (None, "empty"),
    ("not base64 at all!", "not valid base64"),
    (base64.b64encode(bytes(20)).decode(), "decodes to 20 bytes"),
])
def test_invalid_gossip_key_is_refused_with_the_reason(key: str | None, reason: str) -> None:
    with pytest.raises(InvalidGossipKey) as refused:
        validate_gossip_key(key)

    assert reason in str(refused.value)
    assert "new_gossip_key()" in str(refused.value)


def test_key_error_does_not_repeat_the_key() -> None:
    secret = base64.b64encode(b"0123456789abcdefXYZ").decode()

    with pytest.raises(InvalidGossipKey) as refused:
        validate_gossip_key(secret)

    assert secret not in str(refused.value)


def test_argv_without_a_gossip_key_is_refused() -> None:
    with pytest.raises(InvalidGossipKey):
        serf_argv("n1", BIND, RPC, "", {})


def test_argv_encrypts_gossip_disables_replay_and_uses_the_lan_profile() -> None:
    argv = serf_argv("n1", BIND, RPC, KEY, {})

    assert argv == ["serf", "agent", "-node=n1", f"-bind={BIND}", f"-rpc-addr={RPC}", "-profile=lan",
                    "-replay=false", f"-encrypt={KEY}"]


def test_each_tag_becomes_one_tag_flag_and_values_may_contain_equals() -> None:
    argv = serf_argv("n1", BIND, RPC, KEY, {"role": "kvm", "api": "127.0.0.2:7947", "expr": "a=b"})

    tags = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-tag"]
    assert tags == ["role=kvm", "api=127.0.0.2:7947", "expr=a=b"]


@pytest.mark.parametrize("name", ["", "a=b"])
def test_tag_name_serf_cannot_parse_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="tag name"):
        serf_argv("n1", BIND, RPC, KEY, {name: "v"})


def test_rpc_auth_without_a_config_file_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError) as refused:
        serf_argv("n1", BIND, RPC, KEY, {}, rpc_auth="token")

    assert "config_file" in str(refused.value) and "write_serf_secrets" in str(refused.value)
    assert "token" not in str(refused.value)


def test_config_file_keeps_both_secrets_off_the_command_line() -> None:
    argv = serf_argv("n1", BIND, RPC, KEY, {}, rpc_auth="token", config_file="/run/corral/serf.json")

    assert "-config-file=/run/corral/serf.json" in argv
    assert not any(KEY in arg or "token" in arg for arg in argv)


def test_keyring_file_replaces_the_encrypt_flag_which_serf_refuses_alongside_it() -> None:
    argv = serf_argv("n1", BIND, RPC, KEY, {}, keyring_file="/var/lib/corral/serf.keyring")

    assert "-keyring-file=/var/lib/corral/serf.keyring" in argv
    assert not any(arg.startswith("-encrypt") for arg in argv)


def test_join_addresses_retry_instead_of_making_serf_exit() -> None:
    argv = serf_argv("n1", BIND, RPC, KEY, {}, join=["127.0.0.3:7946", "127.0.0.4:7946"])

    assert argv[-3:] == ["-retry-join=127.0.0.3:7946", "-retry-join=127.0.0.4:7946", "-retry-interval=5s"]
    assert not any(arg.startswith("-join") for arg in argv)


def test_snapshot_makes_a_restarted_agent_rejoin() -> None:
    argv = serf_argv("n1", BIND, RPC, KEY, {}, snapshot_path="/var/lib/corral/serf.snapshot")

    assert "-snapshot=/var/lib/corral/serf.snapshot" in argv and "-rejoin" in argv


def test_serf_binary_can_be_overridden() -> None:
    assert serf_argv("n1", BIND, RPC, KEY, {}, serf_binary="/opt/serf/bin/serf")[0] == "/opt/serf/bin/serf"


@pytest.mark.parametrize(("bind", "rpc"), [("127.0.0.2", RPC), ("localhost:7946", RPC), (BIND, "127.0.0.2:0"),
                                           (BIND, "127.0.0.2:70000")])
def test_addresses_that_are_not_ip_and_port_are_refused(bind: str, rpc: str) -> None:
    with pytest.raises(ValueError, match="not ADDR:PORT"):
        serf_argv("n1", bind, rpc, KEY, {})


def test_ipv6_bind_address_in_brackets_is_accepted() -> None:
    assert "-bind=[::1]:7946" in serf_argv("n1", "[::1]:7946", RPC, KEY, {})


def test_empty_node_name_is_refused() -> None:
    with pytest.raises(ValueError, match="node name"):
        serf_argv("", BIND, RPC, KEY, {})


def test_config_carries_the_key_unless_a_keyring_holds_it() -> None:
    assert serf_config(KEY, "token") == {"encrypt_key": KEY, "rpc_auth": "token"}
    assert serf_config(KEY, "token", keyring_file="/k") == {"rpc_auth": "token"}
    assert serf_config(KEY) == {"encrypt_key": KEY}


def test_empty_rpc_auth_is_refused_because_serf_would_then_accept_anyone() -> None:
    with pytest.raises(ValueError, match="rpc_auth is empty"):
        serf_config(KEY, "")


def test_keyring_lists_primary_key_first() -> None:
    other = new_gossip_key()

    assert json.loads(keyring_json([KEY, other])) == [KEY, other]
    with pytest.raises(ValueError):
        keyring_json([])


def test_secrets_files_are_private_and_an_existing_keyring_is_kept(tmp_path: Path) -> None:
    config, keyring = tmp_path / "serf.json", tmp_path / "keyring.json"
    rotated = new_gossip_key()
    keyring.write_text(json.dumps([rotated, KEY]))

    write_serf_secrets(str(config), KEY, "token", str(keyring))
    write_serf_secrets(str(tmp_path / "plain.json"), KEY)

    assert json.loads(config.read_text()) == {"rpc_auth": "token"}
    assert json.loads(keyring.read_text()) == [rotated, KEY]
    assert json.loads((tmp_path / "plain.json").read_text()) == {"encrypt_key": KEY}
    assert os.stat(config).st_mode & 0o777 == 0o600


def test_missing_keyring_is_seeded_with_the_key(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.json"

    write_serf_secrets(str(tmp_path / "serf.json"), KEY, keyring_file=str(keyring))

    assert json.loads(keyring.read_text()) == [KEY]
    assert os.stat(keyring).st_mode & 0o777 == 0o600
