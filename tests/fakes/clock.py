"""A clock the test moves: all three readings advance together, and only when told."""

from __future__ import annotations


class FakeClock:
    """hostagent.clock.Clock under test control; `boot()` starts where a freshly booted host's would."""

    def __init__(self, wall: float = 1_800_000_000.0, boot: float = 100.0) -> None:
        self._wall, self._boot = wall, boot

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._boot

    def boot(self) -> float:
        return self._boot

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time only moves forward"
        self._wall += seconds
        self._boot += seconds
