"""CI exercises a real external Ray cluster: `ray start --head` on a free port, fedsim attaches, the cluster stays."""

from __future__ import annotations

import contextlib
import importlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from fedsim.runtime.ray_grid import RayGrid
from fedsim.scenario import ResourcesSection

pytestmark = pytest.mark.slow  # `make test-all` (and CI, after `make test`)

TESTS = Path(__file__).resolve().parents[1]


@ray.remote(num_cpus=0)
def _shipped_fedsim() -> list[str]:
    return [p for p in sys.path if "py_modules" in p and Path(p, "fedsim").is_dir()]


@ray.remote(num_cpus=0)
def _module_file(name: str) -> str:
    return importlib.import_module(name).__file__


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_attaches_to_an_existing_cluster_and_leaves_it_running(tmp_path, cli):
    assert not ray.is_initialized()
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        address = f"127.0.0.1:{port}"
        code, _, err = cli("run", "quickstart", "--set", "run.rounds=2", "--set", "data.partitioner.num_partitions=4",
                           "--ray-address", address, "--out", str(tmp_path / "run"), "-q")
        assert code == 0, err
        runtime = json.loads((tmp_path / "run" / "summary.json").read_text())["runtime"]
        assert runtime["address"] == address and runtime["shipped_code"] is False
        ray.init(address=address)  # the cluster is still up after the run, and it is the one that did the work
        cluster_nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        ray.shutdown()
        assert runtime["ray_node_ids"] == cluster_nodes
        grid = RayGrid(4, {}, ResourcesSection(), address=address, ship_code=True)
        try:  # workers see the shipped copy on their path (here the venv's editable install would win anyway)
            shipped = ray.get(_shipped_fedsim.remote())
            assert shipped and all(Path(p, "fedsim", "clients", "app.py").is_file() for p in shipped)
            assert grid.describe()["shipped_code"] is True
        finally:
            grid.close()
        # a model factory's own module travels with the job: the workers import the shipped copy
        (tmp_path / "own").mkdir()
        (tmp_path / "own" / "cluster_models.py").write_text(
            "from torch import nn\n\ndef net(num_outputs):\n    return nn.Sequential(nn.Flatten(), "
            "nn.Linear(64, num_outputs))\n")
        grid = RayGrid(4, {}, ResourcesSection(), address=address, user_modules=[tmp_path / "own" /
                                                                                 "cluster_models.py"])
        try:
            worker_file = ray.get(_module_file.remote("cluster_models"))
            assert "py_modules" in worker_file and worker_file.endswith("__init__.py")
        finally:
            grid.close()
        (tmp_path / "own" / "s.toml").write_text('[model]\nfactory = "cluster_models:net"\n[data.partitioner]\n'
                                                 'num_partitions = 4\n')
        code, _, err = cli("run", str(tmp_path / "own" / "s.toml"), "--set", "run.rounds=1", "--ray-address",
                           address, "--out", str(tmp_path / "own-run"), "-q")
        assert code == 0, err
    finally:
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, timeout=120)


@contextlib.contextmanager
def two_node_cluster():
    """A head node (1 CPU) and a worker node (2 CPUs) on this machine; yields (address, the worker's ray.nodes()
    entry) and stops both after."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2",
                        '--resources={"spare": 1}', "--disable-usage-stats"], check=True, capture_output=True,
                       timeout=120)
        ray.init(address=f"127.0.0.1:{port}")
        worker = next(n for n in ray.nodes() if "spare" in n["Resources"])
        ray.shutdown()
        yield f"127.0.0.1:{port}", worker
    finally:
        ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, timeout=120)


def _raylet_of(socket_name: str) -> int:
    """The pid of the raylet serving the node whose raylet socket is `socket_name`."""
    import os

    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"--raylet_socket_name={socket_name} " in cmdline:
                return int(entry.name)
    raise AssertionError(f"no raylet for {socket_name} (pid {os.getpid()})")


def test_a_run_survives_losing_a_worker_node(tmp_path, small_scenario):
    """A two-node cluster on this machine (head: 1 CPU, worker: 2 CPUs); the worker's raylet is killed after round
    2: the run finishes on the head with the metrics of an undisturbed run, and summary.json names the lost node."""
    import os
    import signal

    from announcing_cli import wait_for_row

    import fedsim
    from fedsim.results import load_run, without_timings

    raw = small_scenario(run__rounds=5, data__partitioner__num_partitions=6, strategy__fraction_train=1.0).to_dict()
    raw["faults"] = {"straggler_rate": 1.0, "straggler_delay_s": 0.3, "straggler_clock": "real"}
    scenario = fedsim.Scenario.from_dict(raw)
    path, out = tmp_path / "s.toml", tmp_path / "run"
    path.write_text(scenario.to_toml())
    with two_node_cluster() as (address, worker):
        child = subprocess.Popen([sys.executable, str(TESTS / "announcing_cli.py"), "run", str(path), "--ray-address",
                                  address, "--out", str(out), "-q"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_row(child, 2)
        os.kill(_raylet_of(worker["RayletSocketName"]), signal.SIGKILL)
        _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    survived = load_run(out)
    runtime = survived.summary["runtime"]
    assert runtime["lost_nodes"] == [worker["NodeID"]] and runtime["actor_retries"] >= 1
    assert worker["NodeID"] in runtime["ray_node_ids"] and len(runtime["ray_node_ids"]) == 2
    reference = fedsim.run(scenario.with_overrides({"run.runtime": "inline"}), out=tmp_path / "reference")
    assert without_timings(survived.metrics) == without_timings(reference.metrics)


def test_a_sweep_spread_over_a_ray_cluster_gives_the_runs_one_by_one_gives(tmp_path, cli):
    from fedsim.results import load_run, without_timings
    from fedsim.sweep import run_sweep

    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        spec = tmp_path / "sw.toml"
        spec.write_text('base = "quickstart"\nseeds = [0, 1, 2]\n[grid]\n"strategy.name" = ["fedavg", "fedld"]\n'
                        '[set]\n"run.rounds" = 3\n"data.partitioner.num_partitions" = 4\n'
                        '"data.partitioner.min_partition_size" = 5\n')
        code, out, err = cli("sweep", str(spec), "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "r"))
        assert code == 0, err
        assert sum(line.startswith("[") for line in out.splitlines()) == 6
        code, out, _ = cli("sweep", str(spec), "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "r"),
                           "--resume")
        assert code == 0 and out.count("finished before, skipped") == 6  # a finished run is never redone
    finally:
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, timeout=120)
    from fedsim.sweep import load_sweep

    one_by_one = run_sweep(load_sweep(str(spec))[0], tmp_path / "s")
    for run in one_by_one:
        on_ray = load_run(tmp_path / "r" / run.run_dir.name)
        assert without_timings(on_ray.metrics) == without_timings(run.result.metrics), run.label
        assert (tmp_path / "r" / run.run_dir.name / "model.pt").is_file()


def test_a_sweep_survives_losing_a_worker_node(tmp_path):
    """Six runs as Ray tasks on a head (1 CPU) and a worker node (2 CPUs); the worker's raylet is killed once
    the first run has finished: the runs it held are retried on the head, and every run ends with the metrics it
    has when run one by one."""
    import os
    import signal

    from fedsim.results import load_run, without_timings
    from fedsim.sweep import load_sweep, run_sweep

    spec = tmp_path / "sw.toml"
    spec.write_text('base = "quickstart"\nseeds = [0, 1, 2, 3, 4, 5]\n[set]\n"run.rounds" = 4\n'
                    '"data.partitioner.num_partitions" = 4\n"data.partitioner.min_partition_size" = 5\n'
                    '"faults" = { straggler_rate = 1.0, straggler_delay_s = 0.25, straggler_clock = "real" }\n')
    with two_node_cluster() as (address, worker):
        child = subprocess.Popen([str(Path(sys.executable).with_name("fedsim")), "sweep", str(spec), "--ray-address",
                                  address, "--out", str(tmp_path / "r")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = child.stdout.readline()  # the first finished run: the others are running or queued
        assert first.startswith("["), first + child.stderr.read()
        os.kill(_raylet_of(worker["RayletSocketName"]), signal.SIGKILL)
        out, err = child.communicate(timeout=400)
    assert child.returncode == 0, err[-3000:]
    assert sum(line.startswith("[") for line in [first, *out.splitlines()]) == 6 and "FAILED" not in out
    for run in run_sweep(load_sweep(str(spec))[0], tmp_path / "s"):
        on_ray = load_run(tmp_path / "r" / run.run_dir.name)
        assert without_timings(on_ray.metrics) == without_timings(run.result.metrics), run.label
