"""Storage faults: a write that fails (disk full, read-only file system, permission denied) stops the run with one
line naming the path, leaves no half-written file and the previous checkpoint resumable."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from pathlib import Path

import pytest

import fedsim
from fedsim import checkpoint
from fedsim.errors import StorageError
from fedsim.results import load_run, without_timings
from fedsim.runner import resume

ROUNDS = 4


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m"):
    """A tmpfs of `size` at `path` (a real file system that can fill up or turn read-only)."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True, check=False).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Use up every free byte of `disk`."""
    with contextlib.suppress(OSError), open(disk / "filler", "ab") as fh:
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()


def assert_stopped_cleanly(run_dir: Path, exc: StorageError) -> None:
    """The disk broke right after round 2's row: round 2's checkpoint could not be written, round 1's is intact."""
    assert exc.where == str(run_dir / "checkpoint.pt") and "cannot be written" in str(exc) and "\n" not in str(exc)
    assert checkpoint.read(run_dir)["round"] == 1  # the last good checkpoint, readable
    assert not list(run_dir.rglob("*.tmp"))
    assert [r["round"] for r in load_run(run_dir, unfinished=True).metrics] == [1, 2]  # whole rows only


def resumed_equals_uninterrupted(small_scenario, run_dir: Path, tmp_path: Path) -> None:
    finished = resume(run_dir)
    reference = fedsim.run(small_scenario(run__rounds=ROUNDS), out=tmp_path / "reference")
    assert without_timings(finished.metrics) == without_timings(reference.metrics)


def test_a_full_disk_stops_the_run_and_it_resumes_once_space_is_freed(tmp_path, small_scenario):
    with small_disk(tmp_path / "disk") as disk:
        run_dir = disk / "run"
        with pytest.raises(StorageError) as caught:
            fedsim.run(small_scenario(run__rounds=ROUNDS), out=run_dir,
                       on_round=lambda row: fill(disk) if row["round"] == 2 else None)
        assert "No space left on device" in str(caught.value)
        assert_stopped_cleanly(run_dir, caught.value)
        (disk / "filler").unlink()
        resumed_equals_uninterrupted(small_scenario, run_dir, tmp_path)


def test_a_file_system_turned_read_only_stops_the_run_cleanly(tmp_path, small_scenario):
    def read_only(row: dict) -> None:
        if row["round"] == 2:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

    with small_disk(tmp_path / "disk") as disk:
        run_dir = disk / "run"
        with pytest.raises(StorageError) as caught:
            fedsim.run(small_scenario(run__rounds=ROUNDS), out=run_dir, on_round=read_only)
        assert "Read-only file system" in str(caught.value)
        assert_stopped_cleanly(run_dir, caught.value)
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        resumed_equals_uninterrupted(small_scenario, run_dir, tmp_path)


def test_permission_denied_on_the_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, small_scenario):
    """Root ignores file modes, so the refusal is simulated where the checkpoint is put in place."""
    import os

    real_replace = os.replace
    calls = {"n": 0}

    def refuse_third_checkpoint(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_third_checkpoint)
    run_dir = tmp_path / "run"
    with pytest.raises(StorageError) as caught:
        fedsim.run(small_scenario(run__rounds=ROUNDS), out=run_dir)
    assert caught.value.where == str(run_dir / "checkpoint.pt") and "Permission denied" in str(caught.value)
    monkeypatch.setattr(os, "replace", real_replace)
    assert checkpoint.read(run_dir)["round"] == 2 and not list(run_dir.rglob("*.tmp"))
    resumed_equals_uninterrupted(small_scenario, run_dir, tmp_path)


def test_a_failed_history_write_stops_the_run_with_the_store_path(tmp_path, cli, small_scenario):
    with small_disk(tmp_path / "disk", "8m") as disk:
        run_dir = disk / "run"
        scenario = tmp_path / "u.toml"
        text = small_scenario(run__rounds=ROUNDS).to_toml() + (
            '\n[unlearning]\nrounds = 1\nevaluate = false\n[[unlearning.requests]]\nat_round = 3\nkind = "client"\n'
            'target = 1\nmethod = ["finetune"]\n')
        scenario.write_text(text)
        from fedsim.unlearning import history

        real_save = history.HistoryStore.save

        def save_then_fill(self, server_round, *args):
            if server_round == 3:
                fill(disk)
            return real_save(self, server_round, *args)

        import unittest.mock

        with unittest.mock.patch.object(history.HistoryStore, "save", save_then_fill):
            code, _, err = cli("run", str(scenario), "--out", str(run_dir))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert f"error: {run_dir}/history/round-00003" in lines[0] and "No space left on device" in lines[0]
        assert f"fedsim run --resume {run_dir}" in lines[0]
        assert checkpoint.read(run_dir)["round"] == 2 and not list(run_dir.rglob("*.tmp"))
        assert checkpoint.read(run_dir)["round"] == 2 and not list(run_dir.rglob("*.tmp"))
