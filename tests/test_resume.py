"""Checkpoints and exact resume: a run SIGKILLed mid-round and resumed equals the uninterrupted run; SIGTERM
stops after the round with a checkpoint and exit 130; damaged checkpoints are clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from announcing_cli import wait_for_row
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from golden import measure, run_counting_steps, snapshot

import fedsim
from fedsim import checkpoint
from fedsim.arrays import NpyArray, state_to_record
from fedsim.results import load_run, without_timings
from fedsim.scenario import Scenario

TESTS = Path(__file__).parent
KILL_ROUND = 3
FEDSIM = str(Path(sys.executable).with_name("fedsim"))


def kill_group(pid: int) -> None:
    """Kill what is left of a child's process group (Ray's own processes, when its driver died)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def killed_and_resumed(scenario: Scenario, tmp_path: Path, resume_runtime: str | None = None,
                       hold_checkpoint: bool = False):
    """Run `scenario` in a child process that SIGKILLs itself in the middle of round KILL_ROUND, then resume.
    The previous round's checkpoint is written in the background while round KILL_ROUND trains, so the kill may
    find it on disk or still in flight (then the one before is there); `hold_checkpoint` makes it the latter."""
    spec = tmp_path / "scenario.json"
    spec.write_text(scenario.model_dump_json())
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, str(TESTS / "kill_helpers.py"), str(spec), str(out), str(KILL_ROUND),
                              *(["--hold-checkpoint"] if hold_checkpoint else [])],
                             start_new_session=True, stderr=subprocess.PIPE, text=True)
    _, stderr = child.communicate(timeout=300)
    kill_group(child.pid)
    assert child.returncode == -signal.SIGKILL, stderr[-2000:]
    on_disk = checkpoint.read(out)["round"]
    assert on_disk == KILL_ROUND - 2 if hold_checkpoint else on_disk in (KILL_ROUND - 2, KILL_ROUND - 1)
    if hold_checkpoint:  # round KILL_ROUND - 1's rows were written: the resume drops them and runs it again
        assert max(row["round"] for row in load_run(out, unfinished=True).metrics) == KILL_ROUND - 1
    assert not (out / "summary.json").exists()
    return fedsim.resume(out, runtime=resume_runtime)


def assert_same_run(resumed, reference) -> None:
    assert without_timings(resumed.metrics) == without_timings(reference.metrics)
    assert snapshot(resumed, 0)[0]["summary"] == snapshot(reference, 0)[0]["summary"]  # initial, best, final, ...
    for key, value in reference.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
    assert not (resumed.run_dir / checkpoint.FILE).exists()  # a finished run keeps model.pt, not the checkpoint


DP = {"privacy": {"mode": "dp-sgd", "noise_multiplier": 1.0, "target_epsilon": 50.0}}
CASES = {
    "fedavg": ({}, None),
    "fedld": ({"strategy": {"name": "fedld", "server_lr": 2.0}}, None),
    "fedadam": ({"strategy": {"name": "fedadam"}}, None),
    "dp-sgd": (DP, None),
    "faults": ({"faults": {"dropout_rate": 0.2, "failure_rate": 0.1},
                "strategy": {"name": "fedavg", "min_train_nodes": 1}}, None),
    "unlearning": ({"unlearning": {"rounds": 1, "requests": [
        {"at_round": 2, "kind": "client", "target": 1, "method": ["pga", "retrain"]}]}}, None),
}


def scenario_with(small_scenario, extra: dict, runtime: str = "inline") -> Scenario:
    raw = small_scenario(run__rounds=5, run__runtime=runtime, strategy__fraction_train=0.8).to_dict()
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return Scenario.from_dict(raw)


# make test keeps a FedAvg kill (the one with its last checkpoint in flight, below); these are make test-all's
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_sigkill_mid_round_then_resume_equals_the_uninterrupted_run_inline(case, tmp_path, small_scenario):
    scenario = scenario_with(small_scenario, CASES[case][0])
    reference = fedsim.run(scenario, out=tmp_path / "reference")
    resumed = killed_and_resumed(scenario, tmp_path)
    assert_same_run(resumed, reference)
    if case == "dp-sgd":
        assert resumed.summary["privacy"] == reference.summary["privacy"]
    if case == "unlearning":
        def untimed(rows):
            return [{k: v for k, v in r.items() if k not in ("time_s", "speedup")} for r in rows]

        assert untimed(resumed.summary["unlearning"]) == untimed(reference.summary["unlearning"])
        assert not list((resumed.run_dir / "history").glob("round-*/client-1.pt"))


def test_a_kill_while_the_last_checkpoint_is_written_resumes_from_the_one_before(tmp_path, small_scenario):
    scenario = scenario_with(small_scenario, CASES["fedavg"][0])
    reference = fedsim.run(scenario, out=tmp_path / "reference")
    assert_same_run(killed_and_resumed(scenario, tmp_path, hold_checkpoint=True), reference)


@pytest.mark.slow  # ~30 s each
@pytest.mark.parametrize("case", ["fedld", "dp-sgd"])
def test_sigkill_mid_round_then_resume_equals_the_uninterrupted_run_on_ray(case, tmp_path, small_scenario):
    """Ray's actors train their chunks of clients vectorised, stacked otherwise than inline, and a BLAS may round
    a stacked matmul differently for another stack height: the resumed run equals the uninterrupted one within
    float32 rounding of its steps (tests/golden.py), every count and the privacy ledger exactly."""
    scenario = scenario_with(small_scenario, CASES[case][0], runtime="ray")
    reference, steps = run_counting_steps(
        scenario.with_overrides({"run.runtime": "inline", "run.vectorize": False}), out=tmp_path / "reference")
    resumed = killed_and_resumed(scenario, tmp_path)
    assert resumed.summary["runtime"]["kind"] == "ray" and resumed.summary["runtime"]["vectorized_clients"] > 0
    assert measure(snapshot(reference, steps), snapshot(resumed, steps))[0] == []
    assert resumed.summary.get("privacy") == reference.summary.get("privacy")


def slow_run_in_child(small_scenario, tmp_path: Path, rounds: int, delay_s: float, runtime: str = "inline"):
    """`fedsim run` of a 3-client scenario whose every client straggles `delay_s`, in a child process (its own
    process group); returns (child, scenario file, run dir) once the first round's row is written."""
    raw = small_scenario(run__rounds=rounds, run__runtime=runtime, data__partitioner__num_partitions=3).to_dict()
    raw["faults"] = {"straggler_rate": 1.0, "straggler_delay_s": delay_s, "straggler_clock": "real"}
    path = tmp_path / "slow.toml"
    path.write_text(Scenario.from_dict(raw).to_toml())
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, str(TESTS / "announcing_cli.py"), "run", str(path), "--out", str(out),
                              "-q"], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_row(child, 1)
    return child, path, out


@pytest.mark.slow  # ~20 s: a real `fedsim run` process (make test keeps the in-process stop event, tests/test_loop.py)
def test_sigterm_finishes_the_round_writes_a_checkpoint_and_exits_130(tmp_path, small_scenario):
    child, path, out = slow_run_in_child(small_scenario, tmp_path, rounds=6, delay_s=0.15)  # every round takes ~0.5 s
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert f"resume with: fedsim run --resume {out}" in stderr
    state = checkpoint.read(out)
    rows = load_rows(out)
    assert 1 <= state["round"] < 6 and [r["round"] for r in rows] == list(range(1, state["round"] + 1))
    assert not list(out.glob("*.tmp")) and not (out / "summary.json").exists()

    done = subprocess.run([FEDSIM, "run", "--resume", str(out), "-q"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    reference = fedsim.run(Scenario.from_toml(path), out=tmp_path / "reference")
    assert_same_run(load_run(out), reference)


def load_rows(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def interrupted_run(small_scenario, tmp_path: Path) -> Path:
    from fedsim.server import Interrupted

    stop_requested = threading.Event()

    def stop_at_two(row):
        if row["round"] == 2:
            stop_requested.set()

    with pytest.raises(Interrupted):
        fedsim.run(small_scenario(run__rounds=4), out=tmp_path / "run", on_round=stop_at_two, stop=stop_requested)
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(damage, tmp_path, cli, small_scenario):
    run_dir = interrupted_run(small_scenario, tmp_path)
    path = run_dir / checkpoint.FILE
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.ones(2)}, path)
    code, _, err = cli("run", "--resume", str(run_dir))
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("damage", ["deleted", "cut", "reordered"])
def test_resume_refuses_rows_that_do_not_end_where_the_checkpoint_does(damage, tmp_path, cli, small_scenario):
    run_dir = interrupted_run(small_scenario, tmp_path)
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert checkpoint.read(run_dir)["round"] == 2 and len(lines) == 2
    if damage == "deleted":
        path.unlink()
    else:
        path.write_text(lines[0] if damage == "cut" else lines[1] + lines[0])
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, _, err = cli("run", "--resume", str(run_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{path}: " in err and "but the checkpoint is at round 2" in err, err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing written


def test_resume_refuses_finished_runs_edited_scenarios_and_extra_arguments(tmp_path, cli, small_scenario):
    finished = fedsim.run(small_scenario(run__rounds=1), out=tmp_path / "done").run_dir
    code, _, err = cli("run", "--resume", str(finished))
    assert code == 2 and "is a finished run" in err
    run_dir = interrupted_run(small_scenario, tmp_path)
    code, _, err = cli("run", "quickstart", "--resume", str(run_dir))
    assert code == 2 and "pass only the run dir" in err
    scenario_file = run_dir / "scenario.toml"
    scenario_file.write_text(scenario_file.read_text().replace("rounds = 4", "rounds = 5"))
    code, _, err = cli("run", "--resume", str(run_dir))
    assert code == 2 and "differs from the scenario the checkpoint was written with" in err


def test_checkpoint_holds_only_plain_data_and_round_trips():
    values = {
        "array": np.arange(6, dtype=np.float64).reshape(2, 3), "tensor": torch.ones(2, dtype=torch.int64),
        "record": state_to_record({"w": torch.randn(3)}), "config": ConfigRecord({"a": [1, 2], "b": "x"}),
        "metrics": MetricRecord({"m": 0.5}), "nested": {3: [1.5, None, (2, "y")], "s": {4, 5}},
        "records": RecordDict({"c": ConfigRecord({"k": 1})}), "scalar": np.float32(2.5),
    }
    back = checkpoint.decode(checkpoint.encode(values))
    assert np.array_equal(back["array"], values["array"]) and back["array"].dtype == np.float64
    assert torch.equal(back["tensor"], values["tensor"])
    assert isinstance(back["record"], ArrayRecord)
    assert back["record"]["w"].numpy().tobytes() == values["record"]["w"].numpy().tobytes()
    assert dict(back["config"]) == dict(values["config"]) and dict(back["metrics"]) == {"m": 0.5}
    assert back["nested"] == {3: [1.5, None, (2, "y")], "s": {4, 5}}
    assert dict(back["records"]["c"]) == {"k": 1} and back["scalar"] == 2.5
    with pytest.raises(checkpoint.Unencodable):
        checkpoint.encode(lambda: 0)


def test_the_global_model_is_checkpointed_from_the_servers_own_read_of_it(tmp_path, small_scenario, monkeypatch):
    """The checkpoint's arrays are the state the server read for central evaluation (not a second parse of the
    record), encoded as the record itself would be; every write of a run goes through one thread."""
    record = state_to_record({"w": torch.randn(3, 2), "b": torch.arange(4, dtype=torch.int64)})
    ours, flowers = checkpoint.encode_arrays(record.to_torch_state_dict()), checkpoint.encode(record)
    assert ours.keys() == flowers.keys() and ours[next(iter(ours))] == "arrays"
    for key, tensor in flowers["value"].items():
        assert ours["value"][key].dtype == tensor.dtype and torch.equal(ours["value"][key], tensor)

    parsed, threads = [], []
    for cls in (Array, NpyArray):
        monkeypatch.setattr(cls, "numpy", lambda self, read=cls.numpy: parsed.append(self) or read(self))
    write = checkpoint.write
    monkeypatch.setattr(checkpoint, "write", lambda *a: threads.append(threading.get_ident()) or write(*a))
    fedsim.run(small_scenario(run__rounds=3, run__vectorize=False), out=tmp_path / "run")
    assert parsed and len(parsed) == len({id(a) for a in parsed})  # no array (a global model's, a reply's) parsed twice
    assert len(threads) == 3 and len(set(threads)) == 1 and threading.get_ident() not in threads


def test_checkpoint_is_written_every_n_rounds_and_loads_weights_only(tmp_path, small_scenario):
    from fedsim.server import Interrupted

    rounds_written, stop_requested = [], threading.Event()

    def watch(row):
        path = tmp_path / "run" / checkpoint.FILE
        if path.exists():
            rounds_written.append(torch.load(path, weights_only=True)["round"])
        if row["round"] == 5:
            stop_requested.set()

    with pytest.raises(Interrupted):
        fedsim.run(small_scenario(run__rounds=6, run__checkpoint_every=2), out=tmp_path / "run", on_round=watch,
                   stop=stop_requested)
    assert rounds_written == [2, 2, 4]  # seen at rounds 3, 4, 5 (each round's checkpoint follows its row)
    assert checkpoint.read(tmp_path / "run")["round"] == 5  # stopping writes one whatever the interval


def test_a_damaged_model_file_is_a_one_line_error(tmp_path, cli, small_scenario):
    run_dir = fedsim.run(small_scenario(run__rounds=1), out=tmp_path / "run").run_dir
    (run_dir / "model.pt").write_bytes(b"\x80\x04not a model")
    code, _, err = cli("show", str(run_dir))
    assert code == 2 and "model.pt: unreadable model file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # ~26 s; make test keeps the SIGTERM and SIGKILL resume checks
def test_ctrl_c_to_the_whole_process_group_on_ray_stops_cleanly_and_resumes(tmp_path, small_scenario):
    """What a terminal's Ctrl-C does: SIGINT to the driver and every process of its group (Ray's included)."""
    child, path, out = slow_run_in_child(small_scenario, tmp_path, rounds=5, delay_s=0.3, runtime="ray")
    os.killpg(child.pid, signal.SIGINT)
    _, stderr = child.communicate(timeout=180)
    kill_group(child.pid)
    assert child.returncode == 130 and "resume with: fedsim run --resume" in stderr, stderr
    resumed = fedsim.resume(out, runtime="inline")
    reference = fedsim.run(Scenario.from_toml(path).with_overrides({"run.runtime": "inline"}),
                           out=tmp_path / "reference")
    assert_same_run(resumed, reference)


def test_process_wide_random_generators_are_checkpointed():
    import random

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = checkpoint.decode(checkpoint.encode(checkpoint.rng_state()))  # as written and read back
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    checkpoint.restore_rng(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_the_python_generator_comes_back_from_either_checkpoint_layout():
    """Checkpoints keep Python's Mersenne state as one tensor; ones written before (625 tagged numbers) restore too."""
    import random

    random.seed(5)
    want = [random.random() for _ in range(3)]
    random.seed(5)
    for state in (checkpoint.rng_state(), {**checkpoint.rng_state(), "python": checkpoint.encode(random.getstate())}):
        random.seed(99)
        checkpoint.restore_rng(state)
        assert [random.random() for _ in range(3)] == want


def test_a_run_dir_has_one_writer_and_show_says_when_it_is_live(tmp_path, cli, small_scenario):
    from fedsim.run_lock import RunLock

    run_dir = interrupted_run(small_scenario, tmp_path)
    writer = RunLock(run_dir)  # as the process still running it holds it (flock: per open file, so also here)
    writer.acquire()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, _, err = cli("run", "--resume", str(run_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"is being written by a running fedsim process (pid {os.getpid()})" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    code, out, _ = cli("show", str(run_dir))
    assert code == 0 and f"live: 2 of 4 rounds so far, being written by process {os.getpid()}" in out
    assert "resume" not in out
    writer.release()
    code, out, _ = cli("show", str(run_dir))
    assert "not running (stopped or killed): resume with" in out
    assert fedsim.resume(run_dir).summary["rounds"] == 4
    assert not (run_dir / ".lock").exists()  # a finished run dir holds no lock file


@pytest.mark.slow  # a real `fedsim run` process (~15 s)
def test_a_live_run_refuses_a_second_writer_until_it_is_killed(tmp_path, small_scenario):
    child, _, out = slow_run_in_child(small_scenario, tmp_path, rounds=30, delay_s=0.2)
    try:
        second = subprocess.run([FEDSIM, "run", "--resume", str(out), "-q"], capture_output=True, text=True,
                                timeout=120, check=False)
        assert second.returncode == 2 and f"(pid {child.pid})" in second.stderr, second.stderr
        shown = subprocess.run([FEDSIM, "show", str(out)], capture_output=True, text=True, timeout=120, check=False)
        assert f"being written by process {child.pid}" in shown.stdout, shown.stdout
    finally:
        kill_group(child.pid)
        child.communicate(timeout=60)
    resumed = subprocess.run([FEDSIM, "run", "--resume", str(out), "-q"], capture_output=True, text=True,
                             timeout=300, check=False)  # the kernel let go of the killed process's lock
    assert resumed.returncode == 0, resumed.stderr
