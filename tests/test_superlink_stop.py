"""The README's command that stops the local SuperLink `flwr run` started: that one only, not every SuperLink on a
shared host (another user's, another FLWR_HOME's, a deployment's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STOP_SUPERLINK = next(line for line in (ROOT / "README.md").read_text().splitlines()
                      if line.startswith("pkill ") and "local-superlink" in line)


def stop_local_superlink(flwr_home: Path) -> None:
    """Run the README's stop command for the SuperLink `flwr run` started under `flwr_home`."""
    subprocess.run(["bash", "-c", STOP_SUPERLINK], env=dict(os.environ, FLWR_HOME=str(flwr_home)),
                   check=False, timeout=30)


def _lookalike(home: Path) -> subprocess.Popen:
    """A process whose command line reads as `flwr run`'s local SuperLink under `home` (its real arguments)."""
    log = home / "local-superlink" / "superlink.log"
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "flower-superlink", "--insecure",
                             "--simulation", "--log-file", str(log), "--database", str(log.with_name("state.db"))])


def test_the_readme_stop_command_stops_this_homes_local_superlink_only(tmp_path):
    ours, other = tmp_path / "flwr-home", tmp_path / "other-home"
    mine, theirs = _lookalike(ours), _lookalike(other)
    try:
        stop_local_superlink(ours)
        mine.wait(timeout=10)
        with pytest.raises(subprocess.TimeoutExpired):  # another FLWR_HOME's SuperLink runs on
            theirs.wait(timeout=0.5)
    finally:
        for proc in (mine, theirs):
            proc.kill()
            proc.wait()
