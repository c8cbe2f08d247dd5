"""Golden runs: what a scenario produced (metrics rows, summary, final weights), timings removed, compared within
float32 tolerances so that the same behaviour on another CPU, kernel set or thread count passes and a changed
behaviour does not.

    python tests/golden.py record DIR [SCENARIO...]    # every shipped scenario by default (short rounds)
    python tests/golden.py compare DIR [SCENARIO...]   # DIR's goldens by default; exit 1 and name what differs,
                                                       # print the largest differences
    ... record / compare --vectorised DIR ...          # the vectorised engine's runs (NAME.vectorised), where it
                                                       # applies: the golden runs of a restructuring
                                                       # (on one machine: the stacked engine takes no torch.optim
                                                       # step, so its tolerance is the floor, 16 u)
    python tests/golden.py mutations DIR               # how far each deliberate change (MUTATIONS) moves quickstart
    python tests/golden.py engines                     # vectorised vs sequential runs, largest differences in
                                                       # float32 and in float64 (the `float64` test fixture)

A golden is DIR/NAME.json (metrics rows, summary, the run's chain of optimizer steps) and DIR/NAME.npz (the final
weights as float32 arrays). `tests/test_golden.py` keeps the comparison for a few short scenarios.

Tolerances (docs/design.md, "Goldens"): a float32 operation rounds to a relative u = 2^-24; two valid kernels for
the same computation (another CPU's BLAS, other SIMD widths, another split over threads) add the same terms in
another order, so one optimizer step's results differ by a few such roundings, and each of the S sequential steps
the final model went through carries the difference on. The final weights and every continuous metric may differ by
a relative S * u * GROWTH: the worst case of S steps each a few roundings apart (2^2), times 2^2 for amplification
by the training map. (Measured by `make test-kernels` across three kernel sets and one and two threads, and
against an Intel recording: at most 0.13 * S * u, 3.6e-7; `mutations` moves them by 7e-3 or more.) Counted metrics
(accuracy and the unlearning percentages) move in whole examples when a near-tie prediction flips: they may differ
by at most one example of the smallest set they are measured on (FLIP_SET).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

# Short-round overrides: enough rounds to exercise every feature (unlearning requests, budgets, faults).
SHORT = {
    "aggregate-labels": ["run.rounds=4"],
    "aggregate-responses": ["run.rounds=4"],
    "bench-w1": ["run.rounds=3"],
    "bench-w2": ["run.rounds=2"],
    "bench-w3": ["run.rounds=2"],
    "client-dp": ["run.rounds=5"],
    "cnn-digits-pathological": ["run.rounds=3"],
    "diabetes-regression": ["run.rounds=6"],
    "dp-sgd": ["run.rounds=3"],
    "feature-skew-wine": ["run.rounds=6"],
    "fedld-leaf-synthetic": ["run.rounds=5"],
    "fedld-noniid": ["run.rounds=5"],
    "fedprox-leaf-synthetic": ["run.rounds=5"],
    "quickstart": ["run.rounds=5"],
    "unlearn-class": ["run.rounds=4", "unlearning.requests.0.at_round=2"],
    "unlearn-client": ["run.rounds=4", "unlearning.requests.0.at_round=2"],
    "unlearn-regression": ["run.rounds=4", "unlearning.requests.0.at_round=2"],
}
# Goldens pin the sequential engine (one client after another); tests/test_stacked.py holds the vectorised engine
# (run.vectorize, the default where it applies) to it within float rounding.
SEQUENTIAL = ["run.vectorize=false"]
# $FEDSIM_TEST_THREADS (make test-kernels): every run's clients use that many torch threads
_THREADS = os.environ.get("FEDSIM_TEST_THREADS")
THREADS = [f"run.resources.num_cpus={_THREADS}"] if _THREADS else []
TIMING = {"time_s", "wall_time_s", "startup_s", "speedup"}
NOT_BEHAVIOUR = {"bytes"}  # the history store's file size: torch's zip layout, not what the run computed

UNIT_ROUNDOFF = 2.0**-24  # float32
FLOAT64_ROUNDOFF = 2.0**-53
GROWTH = 2.0**4
# Counted metrics: fractions in [0, 1] or percentages, and the fewest examples any golden measures them on
# (unlearn-client's forgotten client holds 88 examples; the test sets hold 269-360).
COUNTED = {"accuracy": 1.0, "ua": 100.0, "ra": 100.0, "ta": 100.0, "mia": 100.0, "avg_gap": 100.0}
FLIP_SET = 88


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING | NOT_BEHAVIOUR}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _step_counter():
    """(hook handle, callback, chain): counts each optimizer's steps and adds up, round by round, the most any one
    optimizer took: the length of the chain of sequential steps the global model went through."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from fedsim.loop import RoundCallback

    longest, chain = [0], [0]

    def count(optimizer, args, kwargs):
        optimizer.golden_steps = getattr(optimizer, "golden_steps", 0) + 1
        longest[0] = max(longest[0], optimizer.golden_steps)

    class RoundChain(RoundCallback):
        def after_round(self, server_round, arrays, row, stopping):
            chain[0] += longest[0]
            longest[0] = 0

    return register_optimizer_step_post_hook(count), RoundChain(), chain


def run_counting_steps(scenario, out: Path | None = None):
    """fedsim.run(scenario): (its RunResult, the chain of optimizer steps its final model went through)."""
    import fedsim

    hook, counter, chain = _step_counter()
    try:
        result = fedsim.run(scenario, out=out, callbacks=[counter])
    finally:
        hook.remove()
    return result, chain[0]


def snapshot(result, steps: int) -> tuple[dict, dict[str, np.ndarray]]:
    """What a golden holds of a run: (metrics, summary and step chain, timings removed; final weights)."""
    summary = _untimed(result.summary)
    summary.pop("runtime", None)
    weights = {k: v.detach().cpu().numpy().copy() for k, v in sorted(result.state_dict.items())}
    return {"metrics": _untimed(result.metrics), "summary": summary, "steps": steps}, weights


def fingerprint(name: str, overrides: list[str] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Run shipped scenario `name` (with its short overrides) on the sequential engine and snapshot it."""
    from fedsim.scenario import Scenario

    scenario = Scenario.load(name, SHORT.get(name, []) + SEQUENTIAL + THREADS + list(overrides or []))
    with tempfile.TemporaryDirectory() as tmp:
        return snapshot(*run_counting_steps(scenario, Path(tmp) / name))


def tolerance(steps: int, unit_roundoff: float = UNIT_ROUNDOFF) -> float:
    """Relative tolerance for a model that went through `steps` sequential optimizer steps (float32 by default)."""
    return max(steps, 1) * unit_roundoff * GROWTH


def _relative(expected: float, actual: float) -> float:
    return abs(actual - expected) / max(abs(expected), 1e-6)


def measure(expected: tuple[dict, dict], actual: tuple[dict, dict],
            unit_roundoff: float = UNIT_ROUNDOFF) -> tuple[list[str], dict[str, float]]:
    """(what differs beyond tolerance, each as one line; the largest differences seen: relative for weights and
    continuous numbers, in examples of FLIP_SET for counted metrics)."""
    (want, want_w), (got, got_w) = expected, actual
    rel_tol = tolerance(want["steps"], unit_roundoff)
    problems: list[str] = []
    largest = {"weights": 0.0, "continuous": 0.0, "counted_flips": 0.0}
    if got["steps"] != want["steps"]:
        problems.append(f"steps: {want['steps']} recorded, {got['steps']} now")

    def walk(path: str, a, b) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                problems.append(f"{path}: keys {sorted(a)} recorded, {sorted(b)} now")
            for k in sorted(a.keys() & b.keys()):
                walk(f"{path}/{k}", a[k], b[k])
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                problems.append(f"{path}: {len(a)} items recorded, {len(b)} now")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(f"{path}/{i}", x, y)
        elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
            key = path.rsplit("/", 1)[-1]
            if key in COUNTED:
                flips = abs(b - a) / COUNTED[key] * FLIP_SET
                largest["counted_flips"] = max(largest["counted_flips"], flips)
                if flips > 1 + 1e-6:
                    problems.append(f"{path}: {a!r} recorded, {b!r} now (more than one flipped example)")
            elif not (math.isfinite(a) and math.isfinite(b)):
                if not (a == b or (math.isnan(a) and math.isnan(b))):
                    problems.append(f"{path}: {a!r} recorded, {b!r} now")
            else:
                largest["continuous"] = max(largest["continuous"], _relative(a, b))
                if _relative(a, b) > rel_tol:
                    problems.append(f"{path}: {a!r} recorded, {b!r} now (relative tolerance {rel_tol:.1e})")
        elif a != b:
            problems.append(f"{path}: {a!r} recorded, {b!r} now")

    walk("metrics", want["metrics"], got["metrics"])
    walk("summary", want["summary"], got["summary"])
    if want_w.keys() != got_w.keys():
        problems.append(f"weights: tensors {sorted(want_w)} recorded, {sorted(got_w)} now")
    for name in sorted(want_w.keys() & got_w.keys()):
        a, b = want_w[name].astype(np.float64), got_w[name].astype(np.float64)
        if a.shape != b.shape:
            problems.append(f"weights/{name}: shape {a.shape} recorded, {b.shape} now")
            continue
        rel = float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))
        largest["weights"] = max(largest["weights"], rel)
        if rel > rel_tol:
            problems.append(f"weights/{name}: relative difference {rel:.1e} (tolerance {rel_tol:.1e})")
    return problems, largest


def differences(expected: tuple[dict, dict], actual: tuple[dict, dict]) -> list[str]:
    return measure(expected, actual)[0]


# ---- the vectorised engine against the sequential one (tests/test_stacked.py, tests/test_stacked_dp_sgd.py) ----
def relative(a, b) -> float:
    """|a - b| / |b| of two tensors."""
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def run_both(name: str, overrides: list[str] = ()):
    """The sequential and the vectorised run of a short shipped scenario, and the sequential run's step chain
    (the vectorised engine takes its steps without torch.optim, so only the sequential run counts them)."""
    from fedsim.scenario import Scenario

    def run(engine: str):
        return run_counting_steps(Scenario.load(name, [*SHORT.get(name, []), "run.rounds=3", *THREADS, *overrides,
                                                       f"run.vectorize={engine}"]))

    (sequential, steps), (vectorised, _) = run("false"), run("true")
    return sequential, vectorised, steps


@contextlib.contextmanager
def float64_runs():
    """Models, data and whole runs in float64 while inside: two computations of one algorithm then agree to
    float64 rounding, where float32's near-ties (a ReLU or max-pool flipping) cannot blur them."""
    import torch

    import fedsim.data
    from fedsim.clients import workspace

    def forget_built_data_and_models():  # the process caches what it built, in the dtype of the time
        fedsim.data._cached.cache_clear()
        workspace._workspace.cache_clear()

    def float64_arrays(*args, **kwargs):  # every table fedsim.data reads becomes arrays here
        x, y = table_arrays(*args, **kwargs)
        return x.astype(np.float64), y.astype(np.float64) if y.dtype.kind == "f" else y

    table_arrays, before = fedsim.data.table_arrays, torch.get_default_dtype()
    fedsim.data.table_arrays = float64_arrays
    torch.set_default_dtype(torch.float64)
    forget_built_data_and_models()
    try:
        yield
    finally:
        fedsim.data.table_arrays = table_arrays
        torch.set_default_dtype(before)
        forget_built_data_and_models()


def assert_runs_match(sequential, vectorised, steps):
    """Weights and every metric (train/, eval/, privacy/, unlearning) equal to float64 rounding."""
    assert str(next(iter(sequential.state_dict.values())).dtype) == "torch.float64"  # under the float64 fixture
    assert vectorised.summary["runtime"]["vectorized_clients"] > 0
    assert sequential.summary["runtime"]["vectorized_clients"] == 0
    problems, _ = measure(snapshot(sequential, steps), snapshot(vectorised, steps), FLOAT64_ROUNDOFF)
    assert problems == []


# ---- deliberate changes of behaviour the goldens must catch (tests/test_golden.py) ----
def extra_local_step(monkeypatch):
    """The first client of round 1 takes one more step (its first batch again)."""
    from fedsim import training

    original, calls = training.minibatches, itertools.count()

    def batches(*args):
        out = list(original(*args))
        return out + out[:1] if next(calls) == 0 else out

    monkeypatch.setattr(training, "minibatches", batches)


def other_sampled_client(monkeypatch):
    """Round 1 trains client 1 in place of client 0."""
    from flwr.serverapp.strategy import fedavg

    original, calls = fedavg.sample_nodes, itertools.count()

    def sample(*args):
        nodes, everyone = original(*args)
        return ([nodes[1], *nodes[1:]] if next(calls) == 0 else nodes), everyone

    monkeypatch.setattr(fedavg, "sample_nodes", sample)


def learning_rate_up_1_percent(monkeypatch):
    from fedsim import training

    original = training.make_optimizer

    def make(model, cfg):
        optimizer = original(model, cfg)
        for group in optimizer.param_groups:
            group["lr"] *= 1.01
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", make)


MUTATIONS = [extra_local_step, other_sampled_client, learning_rate_up_1_percent]
ENGINE_SCENARIOS = ["quickstart", "fedprox-leaf-synthetic", "fedld-noniid", "feature-skew-wine", "bench-w3"]


def save(folder: Path, name: str, golden: tuple[dict, dict[str, np.ndarray]]) -> None:
    record, weights = golden
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(folder / f"{name}.npz", **weights)


def load(folder: Path, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(folder / f"{name}.npz") as arrays:
        weights = {k: arrays[k] for k in arrays.files}
    return json.loads((folder / f"{name}.json").read_text()), weights


def _largest(largest: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in largest.items())


def main(argv: list[str]) -> int:
    import pytest

    from fedsim.errors import ScenarioError

    vectorised = "--vectorised" in argv
    argv = [a for a in argv if a != "--vectorised"]
    command, folder = argv[0], Path(argv[1]) if len(argv) > 1 else None
    if command == "mutations":
        for mutate in MUTATIONS:
            with pytest.MonkeyPatch.context() as patch:
                mutate(patch)
                problems, largest = measure(load(folder, "quickstart"), fingerprint("quickstart"))
            print(f"{mutate.__name__}: {len(problems)} differences beyond tolerance (largest: {_largest(largest)})")
        return 0
    if command == "engines":
        for name in ENGINE_SCENARIOS:
            for dtype, unit, runs in (("float32", UNIT_ROUNDOFF, contextlib.nullcontext),
                                      ("float64", FLOAT64_ROUNDOFF, float64_runs)):
                with runs():
                    sequential, vectorised, steps = run_both(name)
                    _, largest = measure(snapshot(sequential, steps), snapshot(vectorised, steps), unit)
                print(f"{name} {dtype}: tolerance {tolerance(steps, unit):.1e}; largest: {_largest(largest)}")
        return 0
    suffix, engine = (".vectorised", ["run.vectorize=true"]) if vectorised else ("", [])
    names = argv[2:] or (sorted(SHORT) if command == "record" else
                         sorted(p.stem.removesuffix(suffix) for p in folder.glob(f"*{suffix}.json")
                                if suffix or "." not in p.stem))
    folder.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        try:
            got = fingerprint(name, engine)
        except ScenarioError as exc:  # vectorised: a scenario that cannot be (bags)
            print(f"{name}: not vectorisable ({exc.what})", flush=True)
            continue
        name += suffix
        if command == "record":
            save(folder, name, got)
            print(f"recorded {name} ({got[0]['steps']} steps)", flush=True)
            continue
        problems, largest = measure(load(folder, name), got)
        print(f"{name}: {'same' if not problems else 'DIFFERENT'} (tolerance {tolerance(got[0]['steps']):.1e}; "
              f"largest: {_largest(largest)})", flush=True)
        for line in problems:
            print(f"  {line}", flush=True)
        failed += [name] if problems else []
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
