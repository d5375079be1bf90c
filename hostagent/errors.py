"""Errors an operator must act on, shared by the API, the checks and the jobs.

    ValueError
      BadRequest   input to correct; the message says what is accepted (HTTP 400, exit 2)
    LookupError
      NotFound     no such instance/node/job (HTTP 404, exit 2)
    Exception
      Conflict     the request collides with the config: a duplicate name, a busy
                   object, an instance already running (HTTP 409, exit 2)
"""

from __future__ import annotations


class BadRequest(ValueError):
    """Input the operator must correct; the message says what is accepted."""


class NotFound(LookupError):
    """The named object does not exist; the message lists what does."""


class Conflict(Exception):
    """A request that collides with the config (duplicate name, busy object)."""
