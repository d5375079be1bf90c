"""The one seam to etcd: its v3 JSON gateway spoken over aiohttp.

Every other module receives an `EtcdClient` and never sees HTTP, base64 or
gRPC status codes; etcd's and aiohttp's errors are translated here, once:

    EtcdError                  base of everything this module raises
    ├── EtcdUnavailable        no endpoint answered usefully (endpoints, reason)
    │   └── OutcomeUnknown     a txn was sent but its answer was lost
    ├── EtcdRequestFailed      a member refused the request (endpoint, path, code, message)
    ├── Compacted              the revision asked for is compacted away (compact_revision)
    └── LeaseExpired           the lease is gone (lease_id)

Failover: requests go to the last endpoint that answered, then to the others
in order. A request is re-sent to the next endpoint when the previous one
could not have applied it (connection refused, TLS failure, member without a
leader) or when applying it twice leaves the same state (all but `txn` and
membership changes). A `txn` whose outcome is unknown raises
`EtcdUnavailable` saying so, because re-sending it could report failure for
a transaction that in fact succeeded.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import aiohttp

log = logging.getLogger(__name__)

# gRPC status codes the gateway reports in its JSON errors.
_GRPC_DEADLINE_EXCEEDED = 4
_GRPC_NOT_FOUND = 5
_GRPC_OUT_OF_RANGE = 11
_GRPC_UNAVAILABLE = 14

# etcd 3.4 splits a catching-up watcher's events into responses of at most this
# many distinct revisions, and then stamps each part with the *current* store
# revision; only the last event's revision is then known to be complete.
_ETCD_WATCH_BATCH_MAX_REVS = 1000

_STREAM_CHUNK_BYTES = 64 * 1024

# gRPC metadata "hasleader": a member without a leader refuses at once
# ("no leader") instead of holding the request until its own timeout, so the
# client moves on to a member that can serve it.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
# Errors a member gives before proposing anything to Raft: nothing was applied.
_REFUSED_BEFORE_PROPOSING = {"etcdserver: no leader", "etcdserver: unhealthy cluster"}
# What a member answers after it was removed from the cluster (it no longer runs raft).
_REMOVED_MEMBER = {"raft: stopped", "etcdserver: server stopped", "etcdserver: the member has been permanently removed from the cluster"}


class EtcdError(Exception):
    """Base of every error raised by this module."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered, or the answer was lost on the way."""

    def __init__(self, endpoints: Sequence[str], reason: str) -> None:
        self.endpoints = list(endpoints)
        self.reason = reason
        super().__init__(
            f"etcd unavailable at {', '.join(self.endpoints)}: {reason}; "
            "check that a quorum of etcd members is up and reachable from this node"
        )


class OutcomeUnknown(EtcdUnavailable):
    """A `txn` reached a member but its answer was lost (timeout, leader change): it may have applied."""


class EtcdRequestFailed(EtcdError):
    """A member answered but refused the request (a bug or a misconfiguration)."""

    def __init__(self, endpoint: str, path: str, code: int, message: str) -> None:
        self.endpoint = endpoint
        self.path = path
        self.code = code
        self.message = message
        super().__init__(f"etcd at {endpoint} refused {path}: {message} (code {code})")


class Compacted(EtcdError):
    """History before `compact_revision` is gone; resynchronise from a full read."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(
            f"etcd history is compacted up to revision {compact_revision}; "
            "read the whole key range again instead of watching from an older revision"
        )


class LeaseExpired(EtcdError):
    """The lease expired or was revoked; grant a new one."""

    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        super().__init__(f"etcd lease {lease_id:x} has expired or was revoked; grant a new lease")


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KV


@dataclass(frozen=True)
class WatchBatch:
    """Events of one watch response; every matching change up to `revision` is in this or an earlier batch."""

    revision: int
    events: list[WatchEvent]


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool = False


CompareOp = Literal["=", "!=", ">", "<"]
_COMPARE_TARGETS = {
    "create_revision": "CREATE",
    "mod_revision": "MOD",
    "version": "VERSION",
    "value": "VALUE",
    "lease": "LEASE",
}
_COMPARE_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: `<target of key> <op> <operand>`."""

    key: str
    target: Literal["create_revision", "mod_revision", "version", "value", "lease"]
    op: CompareOp
    operand: int | bytes

    @classmethod
    def create_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        return cls(key, "create_revision", op, revision)

    @classmethod
    def mod_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        return cls(key, "mod_revision", op, revision)

    @classmethod
    def version(cls, key: str, op: CompareOp, version: int) -> Compare:
        return cls(key, "version", op, version)

    @classmethod
    def value(cls, key: str, op: CompareOp, value: bytes) -> Compare:
        return cls(key, "value", op, value)

    @classmethod
    def lease(cls, key: str, op: CompareOp, lease_id: int) -> Compare:
        return cls(key, "lease", op, lease_id)

    def to_json(self) -> dict[str, Any]:
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {
            "key": _b64(self.key.encode()),
            "target": _COMPARE_TARGETS[self.target],
            "result": _COMPARE_RESULTS[self.op],
            self.target: operand,
        }


@dataclass(frozen=True)
class Op:
    """One operation of a transaction branch."""

    kind: Literal["put", "delete", "get"]
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    @classmethod
    def put(cls, key: str, value: bytes, lease: int = 0) -> Op:
        return cls("put", key, value, lease)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls("delete", key)

    @classmethod
    def delete_prefix(cls, prefix: str) -> Op:
        return cls("delete", prefix, prefix=True)

    @classmethod
    def get(cls, key: str) -> Op:
        return cls("get", key)

    @classmethod
    def get_prefix(cls, prefix: str) -> Op:
        return cls("get", prefix, prefix=True)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "put":
            return {"request_put": _put_body(self.key, self.value, self.lease)}
        body = _range_body(self.key, self.prefix)
        return {"request_delete_range" if self.kind == "delete" else "request_range": body}


# One entry per op: get -> its KVs, delete -> number of keys deleted, put -> None.
TxnResponse = list[KV] | int | None


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[TxnResponse]


class _NotSent(Exception):
    """The request never reached a member; any endpoint may take it."""


class _OutcomeUnknown(Exception):
    """The request may have been applied; only idempotent requests may be re-sent."""


class EtcdClient:
    """Client of one etcd cluster through any of its members' client URLs."""

    def __init__(
        self,
        endpoints: list[str],
        ssl: ssl_module.SSLContext | None = None,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        watch_idle_timeout_s: float = 12.0,
    ) -> None:
        """`watch_idle_timeout_s` must exceed the members' watch progress interval (5 s from `etcd_argv`): two
        missed progress notices end a watch on a member that was cut off, and the mirror reopens it on
        another (measured with real partitions: 20 s left healthy nodes showing a deposed master that long)."""
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint URL, e.g. http://127.0.0.1:2379")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._watch_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=watch_idle_timeout_s
        )
        self._preferred = 0
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- key-value -----------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        reply = await self._unary("/v3/kv/range", _range_body(key, prefix=False))
        kvs = [_kv(raw) for raw in reply.get("kvs", [])]
        return kvs[0] if kvs else None

    async def last_key(self, prefix: str) -> str | None:
        """The greatest key under `prefix` (by bytes), without reading any value; None if there is none."""
        body = _range_body(prefix, prefix=True) | {"sort_order": "DESCEND", "sort_target": "KEY", "limit": 1,
                                                   "keys_only": True}
        reply = await self._unary("/v3/kv/range", body)
        kvs = reply.get("kvs", [])
        return _unb64(kvs[0]["key"]).decode() if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under `prefix`, sorted by key, and the revision they were read at."""
        body = _range_body(prefix, prefix=True) | {"sort_order": "ASCEND", "sort_target": "KEY"}
        reply = await self._unary("/v3/kv/range", body)
        return [_kv(raw) for raw in reply.get("kvs", [])], _header_revision(reply)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        reply = await self._unary("/v3/kv/put", _put_body(key, value, lease), lease_id=lease)
        return _header_revision(reply)

    async def delete(self, key: str) -> int:
        """Delete `key`; returns the number of keys deleted (0 or 1)."""
        reply = await self._unary("/v3/kv/deleterange", _range_body(key, prefix=False))
        return int(reply.get("deleted", 0))

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        body = {
            "compare": [c.to_json() for c in compares],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure],
        }
        lease_id = next((op.lease for op in (*success, *failure) if op.lease), 0)
        reply = await self._unary("/v3/kv/txn", body, lease_id=lease_id, idempotent=False)
        return parse_txn_reply(reply)

    async def compact(self, revision: int) -> None:
        """Drop history before `revision`; a no-op when it is already compacted."""
        try:
            await self._unary("/v3/kv/compaction", {"revision": str(revision)})
        except Compacted:
            return

    # --- leases --------------------------------------------------------------

    async def lease_grant(self, ttl_s: int) -> int:
        reply = await self._unary("/v3/lease/grant", {"TTL": str(ttl_s)})
        return int(reply["ID"])

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; returns its TTL in seconds, raises LeaseExpired when it is gone."""
        reply = await self._unary("/v3/lease/keepalive", {"ID": str(lease_id)}, lease_id=lease_id)
        ttl = int(reply.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseExpired(lease_id)
        return ttl

    async def lease_time_to_live(self, lease_id: int) -> int:
        """Seconds left on the lease without renewing it; raises LeaseExpired when it is gone."""
        reply = await self._unary("/v3/lease/timetolive", {"ID": str(lease_id)}, lease_id=lease_id)
        ttl = int(reply.get("TTL", -1))
        if ttl < 0:
            raise LeaseExpired(lease_id)
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys; a no-op when it is already gone."""
        try:
            await self._unary("/v3/lease/revoke", {"ID": str(lease_id)}, lease_id=lease_id)
        except LeaseExpired:
            return

    # --- cluster -------------------------------------------------------------

    async def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """Status of one member: the given endpoint, else whichever answers first."""
        endpoints = [endpoint.rstrip("/")] if endpoint else None
        reply = await self._unary("/v3/maintenance/status", {}, only=endpoints, require_leader=False)
        header = reply.get("header", {})
        return {
            "member_id": int(header.get("member_id", 0)),
            "leader": int(reply.get("leader", 0)),
            "raft_term": int(reply.get("raftTerm", 0)),
            "raft_index": int(reply.get("raftIndex", 0)),
            "db_size": int(reply.get("dbSize", 0)),
            "revision": int(header.get("revision", 0)),
            "version": str(reply.get("version", "")),
        }

    async def member_list(self) -> list[Member]:
        reply = await self._unary("/v3/cluster/member/list", {}, require_leader=False)
        return [_member(raw) for raw in reply.get("members", [])]

    async def member_add(self, peer_urls: list[str], learner: bool = False) -> Member:
        """Announce a new member; start its etcd with cluster state "existing" afterwards.

        As a learner it does not vote, so a member that fails to start cannot
        cost the cluster its quorum; promote it once it has caught up.
        """
        reply = await self._unary("/v3/cluster/member/add", {"peerURLs": peer_urls, "isLearner": learner},
                                  idempotent=False)
        return _member(reply["member"])

    async def member_promote(self, member_id: int) -> None:
        """Make a learner a voting member; refused by etcd until it is in sync with the leader."""
        await self._unary("/v3/cluster/member/promote", {"ID": str(member_id)}, idempotent=False)

    async def member_remove(self, member_id: int) -> None:
        await self._unary("/v3/cluster/member/remove", {"ID": str(member_id)}, idempotent=False)

    # --- watch ---------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes under `prefix` from `start_revision` on, including empty progress batches.

        Raises Compacted when `start_revision` is no longer in etcd's history,
        and EtcdUnavailable when the stream breaks or its member loses its
        leader; resume by watching again from the last revision applied + 1.
        """
        body = {
            "create_request": _range_body(prefix, prefix=True)
            | {"start_revision": str(start_revision), "progress_notify": True}
        }
        response, endpoint = await self._open_watch(body)
        try:
            async for message in _json_lines(response, endpoint):
                batch = parse_watch_message(message, endpoint)
                if batch is not None:
                    yield batch
        finally:
            response.close()

    async def _open_watch(self, body: dict[str, Any]) -> tuple[aiohttp.ClientResponse, str]:
        reasons: list[str] = []
        for endpoint in self._endpoint_order(None):
            try:
                response = await self._session().post(
                    endpoint + "/v3/watch",
                    data=json.dumps(body),
                    ssl=self._ssl_for(endpoint),
                    timeout=self._watch_timeout,
                    # The member cancels the watch when it loses its leader, instead of going silent.
                    headers=_REQUIRE_LEADER,
                )
            except (aiohttp.ClientError, TimeoutError) as e:
                reasons.append(f"{endpoint}: {_describe(e)}")
                continue
            if response.status != 200:
                text = await response.text()
                response.close()
                reasons.append(f"{endpoint}: HTTP {response.status} {text[:200]}")
                continue
            self._preferred = self.endpoints.index(endpoint)
            return response, endpoint
        raise EtcdUnavailable(self.endpoints, "; ".join(reasons))

    # --- transport -----------------------------------------------------------

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Follow etcd membership changes (a member added or removed) without a new client."""
        if not endpoints:
            raise ValueError("EtcdClient needs at least one endpoint URL")
        current = self.endpoints[self._preferred] if self._preferred < len(self.endpoints) else None
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._preferred = self.endpoints.index(current) if current in self.endpoints else 0

    def set_ssl(self, ssl: ssl_module.SSLContext) -> None:
        """Open new connections with this context (a new certificate or new CAs); open ones carry on."""
        self._ssl = ssl

    def _ssl_for(self, endpoint: str) -> ssl_module.SSLContext | bool:
        """The client TLS context for https endpoints (aiohttp's default checks when there is none)."""
        return self._ssl if endpoint.startswith("https:") and self._ssl is not None else True

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(headers={"Content-Type": "application/json"})
        return self._http

    def _endpoint_order(self, only: list[str] | None) -> list[str]:
        if only is not None:
            return only
        n = len(self.endpoints)
        return [self.endpoints[(self._preferred + i) % n] for i in range(n)]

    async def _unary(
        self,
        path: str,
        body: dict[str, Any],
        *,
        lease_id: int = 0,
        idempotent: bool = True,
        only: list[str] | None = None,
        require_leader: bool = True,
    ) -> dict[str, Any]:
        """POST to the endpoints in turn until one answers; see the module docstring for when."""
        headers = _REQUIRE_LEADER if require_leader else {}
        reasons: list[str] = []
        for endpoint in self._endpoint_order(only):
            try:
                reply = await self._post(endpoint, path, body, lease_id, headers)
            except _NotSent as e:
                reasons.append(f"{endpoint}: {e}")
                continue
            except _OutcomeUnknown as e:
                if not idempotent:
                    raise OutcomeUnknown(
                        [endpoint],
                        f"{e}; {path} may or may not have been applied, read back before retrying",
                    ) from None
                reasons.append(f"{endpoint}: {e}")
                continue
            if endpoint in self.endpoints:
                self._preferred = self.endpoints.index(endpoint)
            return reply
        raise EtcdUnavailable(only or self.endpoints, "; ".join(reasons))

    async def _post(
        self, endpoint: str, path: str, body: dict[str, Any], lease_id: int, headers: dict[str, str]
    ) -> dict[str, Any]:
        log.debug("etcd %s %s", endpoint, path)
        try:
            async with self._session().post(
                endpoint + path,
                data=json.dumps(body),
                ssl=self._ssl_for(endpoint),
                timeout=self._timeout,
                headers=headers,
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            raise _NotSent(_describe(e)) from None
        except (aiohttp.ClientError, TimeoutError) as e:
            # A member that rejects our certificate does so before reading the request.
            raise (_NotSent if _is_tls_failure(e) else _OutcomeUnknown)(_describe(e)) from None
        try:
            reply: dict[str, Any] = json.loads(raw)  # the gateway answers with a JSON object
        except ValueError:
            raise EtcdRequestFailed(endpoint, path, status, raw[:200].decode(errors="replace")) from None
        error = _error_of(reply)
        if status == 200 and error is None:
            return reply
        code, message = error if error is not None else (0, f"HTTP {status}")
        if code == _GRPC_UNAVAILABLE and message in _REFUSED_BEFORE_PROPOSING:
            raise _NotSent(message)
        if message in _REMOVED_MEMBER:  # a member removed from the cluster: ask another one
            raise _NotSent(message)
        if code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED):
            raise _OutcomeUnknown(message)
        if code == _GRPC_NOT_FOUND and "lease not found" in message and lease_id:
            raise LeaseExpired(lease_id)
        if code == _GRPC_OUT_OF_RANGE and "compacted" in message:
            raise Compacted(int(body.get("revision", 0)))
        raise EtcdRequestFailed(endpoint, path, code, message)


# --- JSON encoding ---------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's convention)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"  # etcd reads "\0" as "to the end of the key space"
    end[-1] += 1
    return bytes(end)


def _range_body(key: str, prefix: bool) -> dict[str, Any]:
    raw = key.encode()
    body = {"key": _b64(raw)}
    if prefix:
        body["range_end"] = _b64(prefix_range_end(raw))
    return body


def _put_body(key: str, value: bytes, lease: int) -> dict[str, Any]:
    body = {"key": _b64(key.encode()), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def _kv(raw: dict[str, Any]) -> KV:
    return KV(
        key=_unb64(raw["key"]).decode(),
        value=_unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _member(raw: dict[str, Any]) -> Member:
    return Member(
        id=int(raw.get("ID", 0)),
        name=raw.get("name", ""),
        peer_urls=list(raw.get("peerURLs", [])),
        client_urls=list(raw.get("clientURLs", [])),
        is_learner=bool(raw.get("isLearner", False)),
    )


def _header_revision(reply: dict[str, Any]) -> int:
    return int(reply.get("header", {}).get("revision", 0))


def parse_txn_reply(reply: dict[str, Any]) -> TxnResult:
    return TxnResult(
        succeeded=bool(reply.get("succeeded", False)),
        revision=_header_revision(reply),
        responses=[_txn_response(raw) for raw in reply.get("responses", [])],
    )


def _txn_response(raw: dict[str, Any]) -> TxnResponse:
    if "response_range" in raw:
        return [_kv(kv) for kv in raw["response_range"].get("kvs", [])]
    if "response_delete_range" in raw:
        return int(raw["response_delete_range"].get("deleted", 0))
    return None


def _error_of(reply: dict[str, Any]) -> tuple[int, str] | None:
    """The gRPC error in a unary reply or a stream message, in either of the gateway's shapes."""
    error = reply.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        return int(error.get("grpc_code", error.get("code", 0)) or 0), str(error.get("message", ""))
    return int(reply.get("code", 0)), str(reply.get("message", error))


def _is_tls_failure(e: BaseException) -> bool:
    return isinstance(e, (aiohttp.ClientSSLError, ssl_module.SSLError)) or isinstance(e.__cause__, ssl_module.SSLError)


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return f"the member's TLS certificate is not trusted ({e.certificate_error}); check the cluster CA"
    if _is_tls_failure(e):
        return f"TLS failed ({e}); check this node's client certificate and the cluster CA"
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"


async def _json_lines(response: aiohttp.ClientResponse, endpoint: str) -> AsyncIterator[dict[str, Any]]:
    """Newline-delimited JSON messages of a gateway stream, of any size."""
    buffer = b""
    try:
        async for chunk in response.content.iter_chunked(_STREAM_CHUNK_BYTES):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield _parse_stream_line(line, endpoint)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise EtcdUnavailable([endpoint], f"watch stream broke: {_describe(e)}") from None
    if buffer.strip():
        yield _parse_stream_line(buffer, endpoint)
    raise EtcdUnavailable([endpoint], "watch stream ended")


def _parse_stream_line(line: bytes, endpoint: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        raise EtcdRequestFailed(endpoint, "/v3/watch", 0, f"not JSON: {line[:200]!r}") from None
    if not isinstance(message, dict):
        raise EtcdRequestFailed(endpoint, "/v3/watch", 0, f"not a JSON object: {line[:200]!r}")
    return message


def parse_watch_message(message: dict[str, Any], endpoint: str) -> WatchBatch | None:
    """Translate one message of the watch stream; None for the creation acknowledgement."""
    error = _error_of(message)
    if error is not None:
        raise EtcdUnavailable([endpoint], f"watch failed: {error[1]} (code {error[0]})")
    result = message.get("result", {})
    if int(result.get("compact_revision", 0)) > 0:
        raise Compacted(int(result["compact_revision"]))
    if result.get("canceled"):
        raise EtcdUnavailable([endpoint], f"watch canceled: {result.get('cancel_reason', 'no reason given')}")
    if result.get("created"):
        # Its header revision is the store's, not how far the events have got.
        return None
    events = [
        WatchEvent(type="delete" if raw.get("type") == "DELETE" else "put", kv=_kv(raw["kv"]))
        for raw in result.get("events", [])
    ]
    revision = _header_revision(result)
    if len({e.kv.mod_revision for e in events}) >= _ETCD_WATCH_BATCH_MAX_REVS:
        revision = events[-1].kv.mod_revision
    return WatchBatch(revision=revision, events=events)
