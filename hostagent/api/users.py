"""API users for people and scripts on the TCP API: a name, a role, a token.

Tokens are NAME.SECRET; only a hash of the secret is stored in the config, so
reading the config (or a replica on disk) never reveals a usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

from hostagent import model
from hostagent.errors import BadRequest

ROLES = ("read", "write", "admin")  # each may do what the ones before it may (README: Users and roles)
USER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")


def new_user(name: str, role: str, now: float) -> tuple[dict[str, Any], str]:
    """(record for the config, created `now`; token to show the operator once)."""
    if not USER_RE.match(name):
        raise BadRequest(f"user name {name!r} is not valid: a lower-case letter, then letters, digits, '-', '_'")
    if role not in ROLES:
        raise BadRequest(f"role {role!r} is not a role; the roles are {', '.join(ROLES)}")
    secret = secrets.token_hex(24)
    record = {"name": name, "role": role, "token_sha256": _digest(secret), "created": now}
    return record, f"{name}.{secret}"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def authenticate(replica: Any, authorization: str) -> dict[str, Any] | None:
    """The user record for an `Authorization: Bearer NAME.SECRET` header, or None."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or "." not in token:
        return None
    name, _, secret = token.strip().partition(".")
    record = replica.get_json(model.user_key(name)) if USER_RE.match(name) else None
    if record is None or not hmac.compare_digest(record["token_sha256"], _digest(secret)):
        return None
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("name", "role", "created")}
