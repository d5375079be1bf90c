"""The command line of one etcd member, and the wait until a cluster serves.

The agent supervises the etcd process; this module only decides its flags,
tuned for a 3–5 member cluster on a LAN holding a small config key space.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from election.etcd import EtcdClient, EtcdError, EtcdUnavailable

ETCD_BINARY = "etcd"

# Raft timing for a LAN (round trips well under 1 ms). A new etcd leader extends every lease by a full TTL
# plus one election timeout, so these bound what an etcd leader's death adds to a master failover: a leader
# SIGKILLed until puts succeed again took ~1.5 s with etcd's defaults (100/1000), ~0.7 s with these.
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500
# Keep this many revisions of history; a mirror further behind resynchronises in full.
AUTO_COMPACTION_REVISIONS = 1000
QUOTA_BACKEND_BYTES = 1024 * 1024 * 1024
SNAPSHOT_COUNT = 10000
# Watches of an idle key space still hear from etcd this often, so a mirror can
# tell "nothing changed" from "etcd is gone" (EtcdClient's watch idle timeout is 20 s).
WATCH_PROGRESS_INTERVAL = "5s"

_HEALTH_POLL_S = 0.1


@dataclass(frozen=True)
class EtcdTls:
    """PEM file paths: the cluster CA, and this node's certificate and key (used for clients and peers)."""

    ca: str
    cert: str
    key: str
    crl: str | None = None  # revoked client and peer certificates; etcd rereads it on each new connection


def etcd_argv(
    name: str,
    data_dir: str,
    client_url: str,
    peer_url: str,
    initial_cluster: str,
    cluster_state: Literal["new", "existing"],
    tls: EtcdTls | None,
    cluster_token: str = "corral",
    binary: str = ETCD_BINARY,
    heartbeat_ms: int = HEARTBEAT_MS,
    election_timeout_ms: int = ELECTION_TIMEOUT_MS,
) -> list[str]:
    """argv for one member; `initial_cluster` is "name=peer_url,..." including this member.
    `heartbeat_ms`/`election_timeout_ms`: Raft's timing (etcd's tuning guide: heartbeat about the round trip
    between members, election timeout at least 5 times it); slow or emulated machines need longer."""
    if cluster_state not in ("new", "existing"):
        raise ValueError(f"cluster_state must be 'new' or 'existing', not {cluster_state!r}")
    scheme = "https" if tls else "http"
    for what, url in [("client_url", client_url), ("peer_url", peer_url)] + [
        ("initial_cluster", entry.partition("=")[2]) for entry in initial_cluster.split(",")
    ]:
        if urlsplit(url).scheme != scheme:
            raise ValueError(
                f"etcd {what} {url!r} must be an {scheme}:// URL "
                f"({'TLS is configured' if tls else 'no TLS is configured'})"
            )
    argv = [
        binary,
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-state={cluster_state}",
        f"--initial-cluster-token={cluster_token}",
        f"--heartbeat-interval={heartbeat_ms}",
        f"--election-timeout={election_timeout_ms}",
        # A member cut off from the others keeps calling elections it cannot win; without pre-vote each
        # raises its term, and when the network heals that term deposes the majority's leader: every
        # node loses etcd for seconds and the master steps down (seen in test_partitions.py). With
        # pre-vote it first asks whether it could win, and its term stays put.
        "--pre-vote=true",
        "--auto-compaction-mode=revision",
        f"--auto-compaction-retention={AUTO_COMPACTION_REVISIONS}",
        f"--quota-backend-bytes={QUOTA_BACKEND_BYTES}",
        f"--snapshot-count={SNAPSHOT_COUNT}",
        f"--experimental-watch-progress-notify-interval={WATCH_PROGRESS_INTERVAL}",
        "--enable-v2=false",
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=warn",
    ]
    if tls:
        argv += [
            f"--cert-file={tls.cert}",
            f"--key-file={tls.key}",
            f"--trusted-ca-file={tls.ca}",
            "--client-cert-auth=true",
            f"--peer-cert-file={tls.cert}",
            f"--peer-key-file={tls.key}",
            f"--peer-trusted-ca-file={tls.ca}",
            "--peer-client-cert-auth=true",
        ]
        if tls.crl:
            argv += [f"--client-crl-file={tls.crl}", f"--peer-crl-file={tls.crl}"]
    return argv


async def wait_healthy(client: EtcdClient, timeout_s: float) -> dict[str, Any]:
    """Wait until the cluster has a leader and serves a linearizable read; returns the member status.

    The read proves a quorum, which a member's own view of its leader does not.
    Raises EtcdUnavailable with the last reason when `timeout_s` passes.
    """
    deadline = time.monotonic() + timeout_s
    reason = "not asked yet"
    for _ in range(max(1, int(timeout_s / _HEALTH_POLL_S)) + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                status = await client.status()
                if status["leader"]:
                    await client.get("health")  # the key etcd's own health check reads
                    return status
            reason = "the member has no leader"
        except EtcdError as e:
            reason = str(e)
        except TimeoutError:
            reason = "no answer in time"
            break
        await asyncio.sleep(min(_HEALTH_POLL_S, max(0.0, deadline - time.monotonic())))
    raise EtcdUnavailable(client.endpoints, f"not healthy within {timeout_s} s: {reason}")
