"""`daemon.wait_gone` with real processes: it returns once the process exits, not at a polling tick, and
False for one that outlives the wait."""

import asyncio
import subprocess
import sys
import time

import psutil

from kvm import daemon


async def test_a_process_that_exits_is_seen_gone_and_one_that_lives_on_is_not():
    lives = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    exits = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        assert not await daemon.wait_gone(psutil.Process(lives.pid), 0.2)
        began = time.monotonic()
        assert await daemon.wait_gone(psutil.Process(exits.pid), 10.0)
        assert time.monotonic() - began < 5.0, "seen when it exits, not at the timeout"
        assert lives.poll() is None
    finally:
        lives.kill()
        lives.wait()
        exits.wait()


async def test_a_process_gone_before_the_wait_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    handle = psutil.Process(proc.pid)
    proc.wait()
    assert await asyncio.wait_for(daemon.wait_gone(handle, 5.0), 1.0)
