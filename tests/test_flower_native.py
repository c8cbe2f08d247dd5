"""`flwr run .`: a fedsim scenario on Flower's own simulation runtime, same strategies and ClientApp."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_superlink_stop import stop_local_superlink

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # `make test-all` (and CI, after `make test`)


def _flwr_run(tmp_path: Path, scenario: Path, supernodes: int, **env_vars: str) -> subprocess.CompletedProcess:
    """`flwr run` of `scenario` (run dir tmp_path/flwr) under a FLWR_HOME of its own; the local SuperLink it starts
    is stopped after with the README's command (which must find it)."""
    home = tmp_path / "flwr-home"
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env_vars)
    run_config = f'scenario="{scenario}" out="{tmp_path / "flwr"}"'
    try:
        return subprocess.run([str(Path(sys.executable).with_name("flwr")), "run", str(ROOT), "--stream",
                               "--run-config", run_config, "--federation-config", f"num-supernodes={supernodes}"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    finally:
        assert stop_local_superlink(home) == 1  # the README's stop command finds and stops the real one


def test_flwr_run_runs_a_fedsim_scenario_with_unlearning(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        '[run]\nname = "tiny"\nrounds = 3\n[data]\ndataset = "digits"\n'
        '[data.partitioner]\nname = "iid"\nnum_partitions = 4\n[model]\nname = "mlp"\nhidden = [32]\n'
        '[client]\nlr = 0.1\n[strategy]\nname = "fedavg"\n'
        '[[unlearning.requests]]\nat_round = 2\nkind = "client"\ntarget = 1\nmethod = ["retrain", "pga"]\n'
    )
    proc = _flwr_run(tmp_path, scenario, 4)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fedsim run dir:" in proc.stdout, proc.stdout[-2000:]
    summary = json.loads((tmp_path / "flwr" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["runtime"] == {"kind": "flower"}
    assert summary["final"]["accuracy"] > summary["initial"]["accuracy"] + 0.2
    rows = [json.loads(line) for line in (tmp_path / "flwr" / "metrics.jsonl").read_text().splitlines()]
    assert [r["replies"] for r in rows] == [4, 4, 3]  # client 1 is forgotten after round 2
    assert [r["method"] for r in summary["unlearning"]] == ["retrain", "pga"]  # query + train.unlearn messages


TINY = ('[run]\nname = "tiny"\nrounds = 3\n[data]\ndataset = "digits"\n[data.partitioner]\nname = "dirichlet"\n'
        'num_partitions = 4\nalpha = 1.0\n[model]\nname = "mlp"\nhidden = [32]\n'
        '[client]\nlr = 0.1\nlocal_epochs = 2\n[strategy]\nname = "fedavg"\nfraction_train = 0.5\n')


def test_flwr_run_reproduces_fedsim_run(tmp_path):
    """Same scenario, same seed: `flwr run` (one SuperNode per partition) and `fedsim run` give the same metrics."""
    from fedsim.results import load_run, without_timings

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    proc = _flwr_run(tmp_path, scenario, 4)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fedsim = subprocess.run([str(Path(sys.executable).with_name("fedsim")), "run", str(scenario), "--out",
                             str(tmp_path / "inline"), "-q"], capture_output=True, text=True, timeout=300, check=True)
    assert fedsim.returncode == 0
    flwr_rows = without_timings(load_run(tmp_path / "flwr").metrics)
    inline_rows = without_timings(load_run(tmp_path / "inline").metrics)
    flat = [[r["eval"]["loss"], r["eval"]["accuracy"]] for r in flwr_rows]
    assert flat == [pytest.approx([r["eval"]["loss"], r["eval"]["accuracy"]], rel=1e-6) for r in inline_rows]
    assert [r["replies"] for r in flwr_rows] == [r["replies"] for r in inline_rows] == [2, 2, 2]


def test_flwr_run_with_the_wrong_number_of_supernodes_says_the_command(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    proc = _flwr_run(tmp_path, scenario, 2)
    text = proc.stdout + proc.stderr
    assert "Flower started 2 SuperNodes but scenario" in text and "has 4 clients" in text
    last = proc.stdout.strip().splitlines()[-1]  # after Flower's traceback and exit message
    assert last.startswith("error: num-supernodes: Flower started 2 SuperNodes")
    assert last.endswith(f'run: flwr run . --stream --federation-config "num-supernodes=4" --run-config '
                         f"'scenario=\"{scenario}\"'")
    assert proc.returncode == 0  # Flower's CLI streams the logs and exits 0 whatever the run did (README says so)
    assert not (tmp_path / "flwr").exists()


def test_flwr_run_with_a_stale_ray_cluster_file_starts_its_own_ray_and_says_so(tmp_path):
    """A cluster stopped without `ray stop` leaves ray_current_cluster behind; Flower's `ray.init()` would retry
    its address for minutes without a word."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (ray_tmp / "ray").mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        scenario = tmp_path / "tiny.toml"
        scenario.write_text(TINY)
        proc = _flwr_run(tmp_path, scenario, 4, RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS="")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert f"names a Ray cluster at {dead} where nothing answers" in proc.stdout, proc.stdout[-2000:]
    assert f"rm {ray_tmp / 'ray' / 'ray_current_cluster'}" in proc.stdout
    assert json.loads((tmp_path / "flwr" / "summary.json").read_text())["rounds"] == 3


def test_flwr_run_builds_a_factory_model_next_to_the_scenario(tmp_path):
    """The ServerApp and every ClientApp resolve `[model] factory` from the scenario file's folder."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "net_here.py").write_text(
        "from torch import nn\n\ndef net(num_outputs, width=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_outputs))\n")
    scenario = tmp_path / "exp" / "tiny.toml"
    scenario.write_text(TINY.replace('[model]\nname = "mlp"\nhidden = [32]\n',
                                     '[model]\nfactory = "net_here:net"\n[model.args]\nwidth = 6\n'))
    proc = _flwr_run(tmp_path, scenario, 4)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "flwr" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["runtime"] == {"kind": "flower"}
    import torch

    assert torch.load(tmp_path / "flwr" / "model.pt", weights_only=True)["1.weight"].shape == (6, 64)
