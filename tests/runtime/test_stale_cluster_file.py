"""A `ray_current_cluster` file naming a cluster that is gone: Flower's address-less `ray.init()` would retry it for
minutes, so `flwr run` starts its own Ray instead and says so (the end-to-end run: tests/test_flower_native.py)."""

from __future__ import annotations

import os
import socket

import pytest

from fedsim.runtime.ray_cluster import stale_cluster_file


@pytest.fixture
def ray_tmp(tmp_path, monkeypatch):
    """Ray's temp dir (where `ray start` writes ray_current_cluster) in the test's own folder; no $RAY_ADDRESS."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "")  # unset for Ray and fedsim, and restored after the test
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing answers there


def test_a_file_naming_an_address_where_nothing_answers_is_stale(ray_tmp):
    address = f"127.0.0.1:{_closed_port()}"
    (ray_tmp / "ray_current_cluster").write_text(address + "\n")
    assert stale_cluster_file(timeout_s=0.2) == (ray_tmp / "ray_current_cluster", address)


def test_a_file_naming_a_live_address_no_file_or_ray_address_set_are_not(ray_tmp, monkeypatch):
    assert stale_cluster_file(timeout_s=0.2) is None  # no file
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        (ray_tmp / "ray_current_cluster").write_text(f"127.0.0.1:{server.getsockname()[1]}")
        assert stale_cluster_file(timeout_s=0.2) is None
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # the user chose the address: Ray's own behaviour
    assert stale_cluster_file(timeout_s=0.2) is None


def test_flowers_simulation_then_starts_a_local_ray_and_says_how_to_clean_up(ray_tmp, monkeypatch, capsys):
    from fedsim import flower_app
    from fedsim.runtime import ray_cluster

    address = f"127.0.0.1:{_closed_port()}"
    (ray_tmp / "ray_current_cluster").write_text(address)
    monkeypatch.setattr(flower_app, "stale_cluster_file", lambda: ray_cluster.stale_cluster_file(timeout_s=0.2))
    flower_app.start_ray_here_if_its_cluster_file_is_stale()
    assert os.environ["RAY_ADDRESS"] == "local"  # ray.init() with no address then starts a local instance
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and address in out and f"rm {ray_tmp / 'ray_current_cluster'}" in out
