"""Join tokens and the joining node's side of `corral cluster join`.

A token is SECRET.FINGERPRINT: the secret proves the master issued it (only
its hash is stored in the config), the fingerprint pins the cluster CA so the
new node cannot be talked into joining an impostor.

A token record lives only while it can still admit its node: the join that
uses it deletes it (in the transaction that records the node, compared on
the record's revision, so two joins cannot both use it), `corral node
token-revoke` deletes it, and the master sweeps away expired ones.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
from typing import Any

import aiohttp

from hostagent import pki
from hostagent.errors import BadRequest

TOKEN_TTL_S = 3600.0
TOKEN_SWEEP_S = 10.0  # how often the master deletes expired token records (a read of a few keys)


class JoinRefused(Exception):
    """The cluster (or the network) refused this node's join; the message says why."""


def make_token(ca_fingerprint: str) -> tuple[str, str]:
    """(token for the operator, hash to store in the config)."""
    secret = secrets.token_hex(24)  # hex: never starts with '-', which a shell or argparse would misread
    return f"{secret}.{ca_fingerprint.removeprefix('sha256:')}", token_hash(secret)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str]:
    """(secret, pinned CA fingerprint) or BadRequest."""
    secret, _, fingerprint = token.strip().rpartition(".")
    if not secret or len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
        raise BadRequest("the join token is malformed: expected SECRET.FINGERPRINT exactly as printed by "
                         "`corral node add` on a cluster node")
    return secret, "sha256:" + fingerprint


def check_token(record: dict[str, Any] | None, name: str, address: str, now: float) -> None:
    """Why a join with this token record must be refused, as BadRequest; None if it may go on."""
    if record is None:
        raise BadRequest("this join token was never issued by this cluster, or it was used, revoked or expired "
                         "(tokens are one-time); issue one with `corral node add NAME --address ADDR`")
    if record.get("used_at"):
        raise BadRequest(f"this join token was already used (by node '{record['node']}'); tokens are one-time: "
                         "issue a new one with `corral node add`")
    if now > record["expires"]:
        raise BadRequest(f"this join token expired {now - record['expires']:.0f} s ago; "
                         "issue a new one with `corral node add`")
    if (record["node"], record["address"]) != (name, address):
        raise BadRequest(f"this join token is for node '{record['node']}' at {record['address']}, but this "
                         f"agent is configured as '{name}' at {address} (see [node] in its agent.toml)")


def token_state(record: dict[str, Any], now: float) -> str:
    """valid, expired, or used (records of agents that kept used tokens)."""
    if record.get("used_at"):
        return "used"
    return "expired" if now > float(record.get("expires", 0)) else "valid"


def token_rows(records: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """`corral node tokens`: who each token admits, and until when; never the secret nor its hash."""
    rows = [{"node": r.get("node"), "address": r.get("address"), "created": r.get("created"),
             "expires": r.get("expires"), "issued_by": r.get("issued_by"), "state": token_state(r, now),
             "used": bool(r.get("used_at"))} for r in records]
    return sorted(rows, key=lambda row: (row["created"] or 0, str(row["node"])))


def split_address(addr: str, default_port: int) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise BadRequest(f"{addr!r} is not ADDRESS or ADDRESS:PORT (a port from 1 to 65535)")
    return host, int(port)


async def request_join(host: str, port: int, token: str, body: dict[str, Any],
                       timeout_s: float = 60.0) -> dict[str, Any]:
    """Fetch and pin the CA, then ask the cluster to admit this node. Returns the join answer."""
    secret, pinned = parse_token(token)
    base = f"https://{host}:{port}"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to fetch the CA, which the pin then checks
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{base}/v1/join/ca", ssl=insecure) as resp:
                ca_pem = (await resp.text()).encode()
            try:
                fingerprint = pki.fingerprint_of(ca_pem)
            except ValueError:
                raise JoinRefused(f"{host}:{port} did not send a CA certificate; is it a Corral node?") from None
            if fingerprint != pinned:
                raise JoinRefused(f"the cluster at {host}:{port} has CA {fingerprint}, but the token pins "
                                  f"{pinned}: refusing to join (wrong address, or someone in between)")
            trusted = ssl.create_default_context(cafile=None, cadata=ca_pem.decode())
            async with session.post(f"{base}/v1/join", json={**body, "token": secret}, ssl=trusted) as resp:
                data = json.loads(await resp.text() or "{}")
                if resp.status != 200:
                    raise JoinRefused(data.get("message", f"HTTP {resp.status}"))
                return {**data["data"], "ca_cert": ca_pem.decode()}
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise JoinRefused(f"cannot reach a cluster node at {host}:{port}: {exc or type(exc).__name__}") from None
