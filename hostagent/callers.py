"""Who asked: the API user (with role), local root or a node, and the node the request came in through.

hostagent.api.auth names the caller of every request (request[auth.CALLER]). A
non-master forwards a change to the master with the caller in the
X-Corral-Caller header, which the master believes only from a node
certificate, so `corral job info` can say "by: user 'alice' (write) via node
'n2'" although the master saw only n2's certificate.

Jobs and events record the caller of the request that made them. A caller
crosses many layers (route -> operations -> job runner -> events), so it
travels in the context variable CURRENT instead of an argument on every
operation: ApiBase._on_master sets it around the change only (never around
code that starts long-lived tasks, which would inherit it), a job's task
copies it when spawned, and JobRunner sets it from the record when a new
master takes over a queued job. The master's automatic decisions run outside
any request and record no caller. Pure apart from CURRENT; the CLI uses
describe() to print a recorded caller.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

HEADER = "X-Corral-Caller"
KINDS = ("user", "root", "node", "anonymous")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
_ROLES = ("read", "write", "admin", "")


@dataclass(frozen=True)
class Caller:
    """kind user: `name` is the API user, `role` its role; root: the local CLI (admin); node: a node
    certificate without a forwarded caller; anonymous: the public join endpoints. `via`: the node
    whose API the request reached first."""

    kind: str
    name: str
    role: str
    via: str

    @classmethod
    def user(cls, name: str, role: str, via: str) -> Caller:
        return cls("user", name, role, via)

    @classmethod
    def root(cls, via: str) -> Caller:
        return cls("root", "root", "admin", via)

    @classmethod
    def node(cls, name: str) -> Caller:
        return cls("node", name, "", name)

    @classmethod
    def anonymous(cls, via: str) -> Caller:
        return cls("anonymous", "", "", via)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def to_header(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def words(self) -> str:
        return describe(self.to_dict())

    def token(self) -> str:
        """One space-free word for the access log: user:alice:write@n2, root@n1, node:n3@n3."""
        who = {"user": f"user:{self.name}:{self.role}", "node": f"node:{self.name}"}.get(self.kind, self.kind)
        return f"{who}@{self.via}"


def from_dict(raw: Any) -> Caller:
    """A caller from a record or a forwarded header; ValueError says what is wrong."""
    if not isinstance(raw, dict) or set(raw) != {"kind", "name", "role", "via"}:
        raise ValueError("a caller is an object of kind, name, role and via")
    kind, name, role, via = (raw[k] for k in ("kind", "name", "role", "via"))
    if not all(isinstance(v, str) for v in (kind, name, role, via)):
        raise ValueError("a caller's kind, name, role and via are strings")
    if kind not in KINDS or role not in _ROLES or not _NAME_RE.match(via) or \
            (kind != "anonymous" and not _NAME_RE.match(name)):
        raise ValueError(f"not a valid caller: {raw!r}")
    if kind == "root" and (name, role) != ("root", "admin"):
        raise ValueError("the local root caller is named root and has the admin role")
    return Caller(kind, name, role, via)


def from_record(raw: Any) -> Caller | None:
    """The caller stored in a job record, or None (the master's own job, or a record from before callers)."""
    try:
        return from_dict(raw) if raw else None
    except ValueError:
        return None


def from_header(value: str) -> Caller:
    try:
        raw = json.loads(value)
    except ValueError:
        raise ValueError(f"{HEADER} is not JSON") from None
    return from_dict(raw)


def describe(raw: dict[str, Any] | None) -> str:
    """How `job info` and `events` name a recorded caller (None: the master on its own)."""
    if not raw:
        return "the master (automatic)"
    via = f" via node '{raw.get('via')}'"
    kind = raw.get("kind")
    if kind == "user":
        return f"user '{raw.get('name')}' ({raw.get('role')})" + via
    if kind == "root":
        return "local root" + via
    if kind == "node":
        return f"node '{raw.get('name')}'"
    return "anonymous" + via


CURRENT: ContextVar[Caller | None] = ContextVar("corral_caller", default=None)


@contextlib.contextmanager
def acting(caller: Caller | None) -> Iterator[None]:
    """Record `caller` on the jobs and events made inside this block (and the jobs' own tasks)."""
    token = CURRENT.set(caller)
    try:
        yield
    finally:
        CURRENT.reset(token)


def recorded() -> dict[str, str] | None:
    """The current caller as stored in a job or event record."""
    caller = CURRENT.get()
    return None if caller is None else caller.to_dict()
