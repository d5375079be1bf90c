"""Did each guest boot? This node's watch of its own instances' serial console logs.

A QEMU that runs is not yet a guest that works: a kernel can hang on a
missing disk, a service can loop forever. An instance with a `boot_pattern`
is judged after every start of its QEMU (a new process: new pid and start
time): the console output written since that start must hold a line
matching the pattern within `boot_timeout_s`. Each report reads only the
bytes written since the last one, so watching costs a `read()` per booting
instance; an instance that is up is not read at all.

The verdict goes into the node report's entry of the instance:
`boot` is "waiting", "up" or "timeout", with `boot_started_at`, and for a
timeout the last console lines. `hostagent.master.decide.restarts` counts a timeout as a
failed start; `hostagent.status` shows it. A QEMU started for an incoming
live migration runs a guest that booted elsewhere: it is not judged.

The start of each boot's output in the log is the log's size at the look
before that QEMU appeared (logs are appended to, never truncated, by
QEMU). The instance's pattern is read from the config replica when the
QEMU appears, and again during its first `SETTLE_S` (the replica may lag
the start order by a moment); a later change applies from the next start.
Boots being watched are kept in a small JSON file in the run directory, so
a restarted agent carries on judging them; a QEMU that was already running
when this watch began, and is not in that file, is not judged (where its
output begins is not known).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from hostagent.node.bootpattern import BootPattern, BootPatternError
from hostagent.model import DEFAULT_BOOT_TIMEOUT_S

log = logging.getLogger(__name__)

TAIL_LINES = 20
READ_LIMIT_BYTES = 1 << 20  # per instance and look: a chatty guest is read in steps, never all at once
LONGEST_LINE = 4096  # a "line" without a newline this long is judged as it is
TAIL_LINE_CHARS = 300  # of each console line kept for the report
SETTLE_S = 10.0
LOG_SUFFIX = ".console.log"  # how kvm.cmdline.run_paths names the console log of an instance
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78c]")


@dataclass(frozen=True)
class BootCheck:
    """What a boot of one instance must print, and how soon."""

    pattern: str
    timeout_s: float

    @staticmethod
    def of(inst: Mapping[str, Any] | None) -> BootCheck | None:
        """The instance record's check; None when it has no boot pattern."""
        if not inst or not inst.get("boot_pattern"):
            return None
        return BootCheck(str(inst["boot_pattern"]), float(inst.get("boot_timeout_s") or DEFAULT_BOOT_TIMEOUT_S))


@dataclass(frozen=True)
class QemuStart:
    """One QEMU process as the watch tells boots apart."""

    pid: int
    started_at: float
    incoming: bool = False  # started to receive a live migration


def qemu_start(pid: int) -> QemuStart | None:
    """The start time and kind of a running QEMU; None if it is gone already."""
    try:
        proc = psutil.Process(pid)
        return QemuStart(pid, proc.create_time(), "-incoming" in proc.cmdline())
    except psutil.Error:
        return None


@dataclass
class Boot:
    """The watch of one boot: where its output starts, how far it was read, the verdict so far."""

    pid: int
    started_at: float
    pattern: str = ""
    timeout_s: float = 0.0
    offset: int = 0  # where this boot's output begins in the log
    read_to: int = 0
    state: str = ""  # "" (no check) | unknown (cannot be judged) | waiting | up | timeout
    up_at: float = 0.0
    carry: str = ""  # the last line, not yet ended by a newline
    tail: list[str] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        """The fields this boot adds to the node report's entry of its instance."""
        if self.state in ("", "unknown"):
            return {}
        out: dict[str, Any] = {"boot": self.state, "boot_started_at": self.started_at,
                               "boot_pattern": self.pattern, "boot_timeout_s": self.timeout_s}
        if self.state == "up":
            out["boot_up_at"] = self.up_at
        if self.state == "timeout":
            lines = [*self.tail, self.carry[:TAIL_LINE_CHARS]]
            out["boot_console"] = [line for line in lines if line.strip()][-TAIL_LINES:]
        return out


class BootWatcher:
    def __init__(self, console_dir: str, state_file: str,
                 record: Callable[[str], Mapping[str, Any] | None], born_at: float) -> None:
        """`record`: the instance's config record (from the replica), for the check of a boot just begun.

        `born_at`: now; QEMUs started before it are judged only if the state file knows them."""
        self._console_dir = console_dir
        self._state_file = state_file
        self._record = record
        self._born_at = born_at
        self._boots = self._load()
        self._sizes = self._log_sizes()

    def console_log(self, name: str) -> str:
        return os.path.join(self._console_dir, name + LOG_SUFFIX)

    def look(self, running: Mapping[str, QemuStart], now: float) -> dict[str, dict[str, Any]]:
        """Judge the boots of the QEMUs running now; the report fields per instance.

        Synchronous on purpose: two reports collected at once never interleave their looks."""
        sizes = self._log_sizes()
        changed = False
        out: dict[str, dict[str, Any]] = {}
        for name, start in running.items():
            boot = self._boots.get(name)
            new = boot is None or (boot.pid, boot.started_at) != (start.pid, start.started_at)
            if boot is None or new:
                boot = self._boots[name] = self._new_boot(start, sizes.get(name, 0), self._sizes.get(name, 0))
            if boot.state != "unknown" and (new or now - boot.started_at < SETTLE_S):
                changed |= self._recheck(name, boot)
            changed |= new
            if boot.state == "waiting":
                changed |= self._advance(name, boot, now)
            out[name] = boot.entry()
        for name in [n for n in self._boots if n not in running]:
            del self._boots[name]
            changed = True
        self._sizes = sizes
        if changed:
            self._save()
        return out

    def poll(self, now: float) -> bool:
        """Read on the consoles of the boots under way; True if one just booted or timed out.

        Between reports (every 5 s in production) the agent calls this four times a second and reports at once on
        True: the master frees the node's start slot for the next guest without waiting for the next report."""
        changed = ended = False
        for name, boot in list(self._boots.items()):
            if boot.state == "waiting":
                changed |= self._advance(name, boot, now)
                ended |= boot.state != "waiting"
        if changed:
            self._save()
        return ended

    def _new_boot(self, start: QemuStart, size_now: int, size_before: int) -> Boot:
        """`size_before`: the log's size at the last look, before this QEMU was there."""
        if start.incoming or start.started_at < self._born_at:
            return Boot(start.pid, start.started_at, state="unknown")
        offset = size_before if size_now >= size_before else 0  # smaller: a new log (removed, added again)
        return Boot(start.pid, start.started_at, offset=offset, read_to=offset)

    def _recheck(self, name: str, boot: Boot) -> bool:
        """Apply the instance's check, as the replica has it now, to a boot just begun; True if it changed."""
        check = BootCheck.of(self._record(name))
        pattern, timeout_s = (check.pattern, check.timeout_s) if check else ("", 0.0)
        if (boot.pattern, boot.timeout_s) == (pattern, timeout_s):
            return False
        boot.pattern, boot.timeout_s, boot.state = pattern, timeout_s, "waiting" if pattern else ""
        boot.read_to, boot.carry, boot.tail = boot.offset, "", []
        try:
            BootPattern(pattern)
        except BootPatternError as exc:  # checked at submit; a record written by hand is possible
            log.warning("instance '%s': boot pattern %r is not a regular expression (%s); its boot is not "
                        "judged (fix it with `corral instance modify %s --boot-pattern REGEX`)",
                        name, pattern, exc, name)
            boot.state = ""
        if boot.state:
            log.info("instance '%s': watching its console for a line matching %r (boot timeout %.0f s)",
                     name, pattern, timeout_s)
        return True

    def _advance(self, name: str, boot: Boot, now: float) -> bool:
        """Read what the log gained since the last look; True if anything changed."""
        try:
            with open(self.console_log(name), "rb") as fh:
                fh.seek(boot.read_to)
                data = fh.read(READ_LIMIT_BYTES)
                at_end = fh.tell() >= os.fstat(fh.fileno()).st_size
        except FileNotFoundError:
            data, at_end = b"", True
        boot.read_to += len(data)
        if _scan(boot, data.decode("utf-8", errors="replace")):
            boot.state, boot.up_at = "up", now
            log.info("instance '%s' booted: its console printed a line matching %r after %.1f s",
                     name, boot.pattern, now - boot.started_at)
        elif at_end and now - boot.started_at >= boot.timeout_s:
            boot.state = "timeout"
            log.warning("instance '%s' did not boot: no console line matching %r within %.0f s",
                        name, boot.pattern, boot.timeout_s)
        return bool(data) or boot.state != "waiting"

    def _log_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        try:
            with os.scandir(self._console_dir) as entries:
                for entry in entries:
                    if entry.name.endswith(LOG_SUFFIX):
                        try:
                            sizes[entry.name[:-len(LOG_SUFFIX)]] = entry.stat().st_size
                        except FileNotFoundError:
                            continue
        except FileNotFoundError:
            pass
        return sizes

    def _load(self) -> dict[str, Boot]:
        try:
            with open(self._state_file) as fh:
                raw = json.load(fh)
            return {str(name): Boot(**fields) for name, fields in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("boot watch state %s is unreadable (%s); boots running now are not judged",
                        self._state_file, exc)
            return {}

    def _save(self) -> None:
        tmp = self._state_file + ".tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump({name: asdict(boot) for name, boot in self._boots.items()}, fh)
            os.replace(tmp, self._state_file)
        except OSError as exc:
            log.warning("could not save the boot watch state to %s (%s); an agent restart now would "
                        "leave the boots under way unjudged", self._state_file, exc)


def _scan(boot: Boot, text: str) -> bool:
    """Feed new console text to `boot`; True when a line matches its pattern."""
    regex = BootPattern(boot.pattern)
    lines = (boot.carry + _ESCAPES.sub("", text).replace("\r", "")).split("\n")
    boot.carry = lines.pop()
    if len(boot.carry) > LONGEST_LINE:
        lines.append(boot.carry)
        boot.carry = ""
    tail = deque(boot.tail, maxlen=TAIL_LINES)
    found = False
    for line in lines:
        tail.append(line[:TAIL_LINE_CHARS])
        found = found or regex.search(line)
    boot.tail = list(tail)
    return found or regex.search(boot.carry)  # a prompt such as "login: " ends no line
