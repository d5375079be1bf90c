"""The `serf agent` command line and its secrets, for the Corral agent that supervises the process.

Pure builders plus one writer for the secrets file. Decisions (checked
against serf 0.8.2):

- Gossip is always encrypted: `serf_argv` refuses to build a command line
  without a valid key, so a cluster cannot come up in clear text by mistake.
- serf 0.8.2 has no `-rpc-auth` flag; the RPC key is accepted only from a
  config file (`rpc_auth`). `write_serf_secrets` writes that file (mode 0600)
  and `serf_argv(..., config_file=...)` points serf at it. The gossip key goes
  there too, so neither secret shows in /proc/PID/cmdline.
- serf refuses `-encrypt` (or `encrypt_key`) together with `-keyring-file`; with
  a keyring the key lives only in the keyring file, seeded once, because serf
  rewrites that file itself when keys are rotated.
- `-replay=false`: a (re)joining node must not re-run old user events.
- join addresses become `-retry-join`: with `-join`, serf exits when none of
  them answers, so one peer down at boot would crash-loop the child.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import os
import secrets
from collections.abc import Mapping, Sequence

GOSSIP_KEY_BYTES = 32
JOIN_RETRY_INTERVAL_S = 5
_VALID_KEY_LENGTHS = (16, 24, 32)  # AES-128/192/256, what memberlist accepts


class InvalidGossipKey(ValueError):
    """A gossip key Serf would refuse (or that would leave gossip unencrypted)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid serf gossip key: {reason}; generate one with "
                         f"membership.agent.new_gossip_key() ({GOSSIP_KEY_BYTES} random bytes, base64)")
        self.reason = reason


def new_gossip_key() -> str:
    """A fresh AES-256 gossip key, base64 as `-encrypt` and keyring files expect."""
    return base64.b64encode(secrets.token_bytes(GOSSIP_KEY_BYTES)).decode("ascii")


def validate_gossip_key(s: object) -> None:
    """Raise InvalidGossipKey unless s is base64 of 16, 24 or 32 bytes. The message never contains the key."""
    if s is None or s == "":
        raise InvalidGossipKey("it is empty")
    if not isinstance(s, str):
        raise InvalidGossipKey(f"expected a base64 string, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidGossipKey("it is not valid base64") from None
    if len(raw) not in _VALID_KEY_LENGTHS:
        raise InvalidGossipKey(f"it decodes to {len(raw)} bytes, serf needs 16, 24 or 32")


def serf_argv(node: str, bind: str, rpc_addr: str, encrypt_key_b64: str, tags: Mapping[str, str],
              rpc_auth: str | None = None, join: Sequence[str] = (), snapshot_path: str | None = None,
              keyring_file: str | None = None, config_file: str | None = None,
              serf_binary: str = "serf") -> list[str]:
    """argv for `serf agent`; bind and rpc_addr are "ADDR:PORT" ("[v6]:PORT"), join entries HOST[:PORT].

    Where the gossip key goes: the keyring file if keyring_file is given, else the
    config file if config_file is given, else `-encrypt` on argv (visible to every
    local user in /proc; prefer config_file). rpc_auth requires config_file; write
    both files with `write_serf_secrets` before starting serf.
    With snapshot_path, `-rejoin` makes a restarted agent go back to the nodes it
    knew even after a graceful leave: a Corral node that runs serf means to be in.
    """
    validate_gossip_key(encrypt_key_b64)
    if not node:
        raise ValueError("serf node name is empty; use the Corral node name")
    _check_host_port("bind", bind)
    _check_host_port("rpc_addr", rpc_addr)
    bad_join = [a for a in join if not a or a != a.strip() or " " in a]
    if bad_join:
        raise ValueError(f"serf join address(es) {bad_join!r} are not HOST[:PORT]")
    if rpc_auth is not None and config_file is None:
        raise ValueError("serf 0.8.2 reads the RPC auth key only from a config file: pass config_file= and "
                         "write it with write_serf_secrets(config_file, encrypt_key_b64, rpc_auth, keyring_file)")
    argv = [serf_binary, "agent", f"-node={node}", f"-bind={bind}", f"-rpc-addr={rpc_addr}",
            "-profile=lan", "-replay=false"]
    if keyring_file is not None:
        argv.append(f"-keyring-file={keyring_file}")
    elif config_file is None:
        argv.append(f"-encrypt={encrypt_key_b64}")
    if config_file is not None:
        argv.append(f"-config-file={config_file}")
    if snapshot_path is not None:
        argv += [f"-snapshot={snapshot_path}", "-rejoin"]
    for key, value in tags.items():
        if not key or "=" in key:
            raise ValueError(f"serf tag name {key!r} must be non-empty and contain no '='")
        argv += ["-tag", f"{key}={value}"]
    if join:
        argv += [f"-retry-join={addr}" for addr in join]
        argv.append(f"-retry-interval={JOIN_RETRY_INTERVAL_S}s")
    return argv


def serf_config(encrypt_key_b64: str, rpc_auth: str | None = None, keyring_file: str | None = None) -> dict[str, str]:
    """The secrets part of a serf JSON config, matching what `serf_argv` leaves off the command line."""
    validate_gossip_key(encrypt_key_b64)
    config: dict[str, str] = {}
    if keyring_file is None:
        config["encrypt_key"] = encrypt_key_b64
    if rpc_auth is not None:
        if not rpc_auth:
            raise ValueError("rpc_auth is empty, which serf treats as no authentication; pass None or a token")
        config["rpc_auth"] = rpc_auth
    return config


def keyring_json(keys: Sequence[str]) -> str:
    """A serf keyring file: a JSON list of base64 keys, the first one primary."""
    if not keys:
        raise ValueError("a serf keyring needs at least one key")
    for key in keys:
        validate_gossip_key(key)
    return json.dumps(list(keys))


def write_serf_secrets(config_file: str, encrypt_key_b64: str, rpc_auth: str | None = None,
                       keyring_file: str | None = None) -> None:
    """Write the config file (always) and seed the keyring file (only if missing), both mode 0600.

    An existing keyring is left alone: serf keeps rotated keys there.
    """
    _write_private(config_file, json.dumps(serf_config(encrypt_key_b64, rpc_auth, keyring_file)))
    if keyring_file is not None and not os.path.exists(keyring_file):
        _write_private(keyring_file, keyring_json([encrypt_key_b64]))


def _write_private(path: str, text: str) -> None:
    """Atomic replace of a file only root can read: a reader sees the old or the new secret, never half."""
    tmp = f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # O_CREAT keeps the mode of a leftover file; start from none
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_host_port(what: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        ok = sep == ":" and port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"serf {what} address {value!r} is not ADDR:PORT (e.g. 127.0.0.1:7946 or [::1]:7946)")
