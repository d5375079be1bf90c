"""QueryJobs' answers: a LUXI job is one Corral job (an `instance.moves` job for hbal's moves of one
instance), so its Ganeti fields are the RAPI's shape of that job's record. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hostagent.rapi import shapes


def single(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every QueryJobs field of a Corral job."""
    return {**shapes.job(record), "id": int(record["id"])}


def pick(job: Mapping[str, Any] | None, wanted: Sequence[str]) -> list[Any] | None:
    """QueryJobs' answer for one job: the wanted fields in order (null for an unknown job, Ganeti's answer)."""
    return None if job is None else [job.get(name) for name in wanted]
