"""The README's command that stops the local SuperLink `flwr run` started: that one only, not every SuperLink on a
shared host (another user's, another FLWR_HOME's, a deployment's)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STOP_SUPERLINK = next(line for line in (ROOT / "README.md").read_text().splitlines()
                      if line.startswith("pkill ") and "local-superlink" in line)


def stop_local_superlink(flwr_home: Path, timeout_s: float = 20.0) -> int:
    """Run the README's stop command for the SuperLink `flwr run` started under `flwr_home`, and wait until every
    process it matches has exited (each one's pidfd becomes readable then); returns how many it stopped."""
    env = dict(os.environ, FLWR_HOME=str(flwr_home))
    found = subprocess.run(["bash", "-c", "pgrep" + STOP_SUPERLINK.removeprefix("pkill")], env=env,
                           capture_output=True, text=True, check=False, timeout=30).stdout.split()
    exits = []
    for pid in found:
        try:
            exits.append(os.pidfd_open(int(pid)))
        except ProcessLookupError:  # already gone
            continue
    subprocess.run(["bash", "-c", STOP_SUPERLINK], env=env, check=False, timeout=30)
    try:
        for fd in exits:
            assert select.select([fd], [], [], timeout_s)[0], f"a SuperLink still runs {timeout_s:g} s after the stop"
    finally:
        for fd in exits:
            os.close(fd)
    return len(exits)


def _lookalike(home: Path) -> subprocess.Popen:
    """A process whose command line reads as `flwr run`'s local SuperLink under `home` (its real arguments)."""
    log = home / "local-superlink" / "superlink.log"
    return subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()", "flower-superlink", "--insecure",
                             "--simulation", "--log-file", str(log), "--database", str(log.with_name("state.db"))])


def test_the_readme_stop_command_stops_this_homes_local_superlink_only(tmp_path):
    ours, other = tmp_path / "flwr-home", tmp_path / "other-home"
    mine, theirs = _lookalike(ours), _lookalike(other)
    try:
        assert stop_local_superlink(ours) == 1
        assert mine.wait(timeout=10) is not None
        with pytest.raises(subprocess.TimeoutExpired):  # another FLWR_HOME's SuperLink runs on
            theirs.wait(timeout=0.5)
    finally:
        for proc in (mine, theirs):
            proc.kill()
            proc.wait()
