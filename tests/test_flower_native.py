"""`flwr run .`: a fedsim scenario on Flower's own simulation runtime, same strategies and ClientApp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # `make test-all` (and CI, after `make test`)


def _stop_superlinks(flwr_home: Path) -> None:
    """Terminate the local SuperLink `flwr run` started (its command line names our FLWR_HOME)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmdline and str(flwr_home) in cmdline:
            os.kill(int(entry.name), signal.SIGTERM)


def test_flwr_run_runs_a_fedsim_scenario_with_unlearning(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        '[run]\nname = "tiny"\nrounds = 3\n[data]\ndataset = "digits"\n'
        '[data.partitioner]\nname = "iid"\nnum_partitions = 4\n[model]\nname = "mlp"\nhidden = [32]\n'
        '[client]\nlr = 0.1\n[strategy]\nname = "fedavg"\n'
        '[[unlearning.requests]]\nat_round = 2\nkind = "client"\ntarget = 1\nmethod = ["retrain", "pga"]\n'
    )
    home = tmp_path / "flwr-home"
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run_config = f'scenario="{scenario}" out="{tmp_path / "run"}"'
    flwr = str(Path(sys.executable).with_name("flwr"))
    try:
        proc = subprocess.run([flwr, "run", str(ROOT), "--stream", "--run-config", run_config,
                               "--federation-config", "num-supernodes=4"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    finally:
        _stop_superlinks(home)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fedsim run dir:" in proc.stdout, proc.stdout[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["runtime"] == {"kind": "flower"}
    assert summary["final"]["accuracy"] > summary["initial"]["accuracy"] + 0.2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["replies"] for r in rows] == [4, 4, 3]  # client 1 is forgotten after round 2
    assert [r["method"] for r in summary["unlearning"]] == ["retrain", "pga"]  # query + train.unlearn messages
