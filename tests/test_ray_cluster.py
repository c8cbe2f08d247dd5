"""CI exercises a real external Ray cluster: `ray start --head` on a free port, fedsim attaches, the cluster stays."""

from __future__ import annotations

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


@ray.remote(num_cpus=0)
def _shipped_fedsim() -> list[str]:
    return [p for p in sys.path if "py_modules" in p and Path(p, "fedsim").is_dir()]


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
    finally:
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, timeout=120)
