"""Per-instance VNC passwords (hvparam vnc=tcp).

The master makes one for each instance it adds (and for an older instance at
its next modify) and keeps it under a key of its own, by the instance's UUID
so that a rename keeps it: never in the instance record, nor in a job's
arguments, which every `read` user sees. Only the VNC route, which needs the
write role, shows it; each node reads it from its replica when it starts a
QEMU and hands it over QMP (kvm.media). VNC authentication is DES with 8
characters, so the display still should not face the internet: it is a lock
against the lab's other users, not more.
"""

from __future__ import annotations

import secrets
from typing import Any

from election.etcd import Op

from hostagent import model
from hostagent.master.store import Store

PREFIX = "/corral/vnc-passwords/"
LENGTH = 8  # all that VNC authentication uses
ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/l/I to misread


def key(uuid: str) -> str:
    return PREFIX + uuid


def new_password() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def password(replica: Any, uuid: str) -> str:
    """The instance's password as this node's replica has it ("" for none yet)."""
    record = replica.get_json(key(uuid))
    return str(record.get("password", "")) if isinstance(record, dict) else ""


async def ensure(store: Store, inst: dict[str, Any]) -> None:
    """Give `inst` a password unless it has one (the master, in the add and modify jobs)."""
    if await store.get(key(inst["uuid"])) is None:
        await store.write([Op.put(key(inst["uuid"]), model.dumps({"password": new_password()}))])


def forget(uuid: str) -> Op:
    """The write that removes the password of an instance being removed."""
    return Op.delete(key(uuid))
