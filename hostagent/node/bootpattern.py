"""Boot patterns are matched with RE2: time linear in the line, whatever the pattern.

A boot pattern comes from any `write` user and is matched against every
console line on the agent's event loop. Python's `re` backtracks: a pattern
such as `(.+)+X` takes exponential time on a line without an X, the loop
stops, the node lease is not renewed and the node fences itself. RE2
(Google's engine, `google-re2`) never backtracks, so no pattern can stall
the loop. Chosen over plain substrings, which would take away the regular
expressions operators already use (`login:|CORRAL-GUEST-BOOTED`), and over
a worker with a time budget, which still costs a process per check. What
RE2 does not have (backreferences, lookaround) is refused at submit, with
the reason.
"""

from __future__ import annotations

import re2


class BootPatternError(ValueError):
    """The pattern is not an RE2 regular expression; the message says why."""


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error is ours to report, not absl's on stderr


class BootPattern:
    """A compiled boot pattern; `search` finds it anywhere in a line."""

    def __init__(self, pattern: str) -> None:
        try:
            self._regex = re2.compile(pattern, _OPTIONS)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) \
                else str(exc)
            raise BootPatternError(reason) from None
        self.pattern = pattern

    def search(self, line: str) -> bool:
        return self._regex.search(line) is not None
