"""`make bench`: the same workloads through stock Flower, fedsim inline, fedsim ray (2 actors) and a plain
PyTorch loop; prints a table per workload and writes benchmarks/RESULTS.md.

Each run is a fresh subprocess (`runners.py`), so wall time includes interpreter start, imports and Ray
start-up/shut-down. Steady-state seconds per round are the mean over rounds 2..R. Ratios are to the plain loop.
  W1  scenarios/bench-w1.toml  digits MLP 64-64-10, 100 clients, all train every round, 10 rounds
  W2  scenarios/bench-w2.toml  10,000 leaf-synthetic devices, 100 sampled per round (and the same with 1,000)
  W3  scenarios/bench-w3.toml  CNN on digits, 10 clients, training dominates
  W4  scenarios/bench-w4.toml  pfl-research's CIFAR-10 set-up on synthetic 3x32x32 images: 1,000 clients x 50,
                               50 a round, batch 10, a 2-conv CNN of 1.6M parameters
  W5  scenarios/bench-w5.toml  a ResNet-18 (CIFAR stem, GroupNorm, 11.2M parameters) round: 50 clients x 50
                               synthetic 3x32x32 images, all 50 a round, batch 10; sequential vs vectorised
  profile                      where a vectorised W1 round's time goes, with and without early reduction, and
                               a W2 and a W4 round's (benchmarks/round_profile.py)
  fedld                        FedLD's aggregation vs the Gram matrices it needs (m = 50, 1M parameters)
  dp                           DP-SGD local training vs plain, on the quickstart clients
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
W2_SMALL = ["data.partitioner.num_partitions=1000", "data.generator.n_samples=20000", "strategy.fraction_train=0.1"]
WORKLOADS = {
    "W1": ("bench-w1", [], ["plain", "stock-flower", "fedsim-sequential", "fedsim-vectorized", "fedsim-ray"]),
    "W2 (10,000 clients)": ("bench-w2", [], ["fedsim-sequential", "fedsim-vectorized", "fedsim-ray"]),
    "W2 (1,000 clients)": ("bench-w2", W2_SMALL, ["fedsim-sequential", "fedsim-vectorized", "fedsim-ray"]),
    "W3": ("bench-w3", [], ["plain", "fedsim-sequential", "fedsim-vectorized", "fedsim-ray"]),
    "W4": ("bench-w4", [], ["plain", "stock-flower", "fedsim-sequential", "fedsim-vectorized"]),
    "W5": ("bench-w5", [], ["fedsim-sequential", "fedsim-vectorized"]),
}


def scenario_notes(scenario: str) -> str:
    """What a reader must know to compare the runners' accuracies."""
    import fedsim

    fraction = fedsim.Scenario.load(scenario).strategy.fraction_train
    if fraction >= 1:
        return ""
    return (f"fraction_train {fraction:g}: fedsim's runners sample the same clients; the plain loop and stock Flower "
            "each sample their own clients of the same number")


def run_one(runner: str, scenario: str, sets: list[str]) -> dict:
    cmd = [sys.executable, str(HERE / "runners.py"), runner, scenario, *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{runner} on {scenario} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["steady_s"] = statistics.mean(result["round_s"][1:])
    return result


def _fedld() -> str:
    from fedld_aggregation import measure

    r = measure()
    return (f"{r['params']:,} parameters, m = {r['m']} clients: per-layer Gram matrices alone {r['gram_s']:.3f} s, "
            f"`principal_gradient_update` {r['fedld_s']:.3f} s ({r['ratio']:.2f}x the Gram matrices)")


def _dp() -> str:
    from dp_overhead import measure

    r = measure()
    return (f"{r['clients']} quickstart clients, one round of local training each (best of 3): plain "
            f"{r['plain_s']:.3f} s, DP-SGD one client at a time (Opacus) {r['dp_s']:.3f} s ({r['ratio']:.2f}x), "
            f"DP-SGD vectorised {r['dp_vectorized_s']:.3f} s ({r['vectorized_ratio']:.2f}x)")


def _scale() -> str:
    from scale import describe, measure

    return "gaussian-regression, 10 examples per client, 100 sampled per round, inline: " + \
        describe(measure([1000, 100_000]))


def _sweep() -> str:
    from parallel_sweep import measure

    r = measure()
    return (f"{r['runs']} runs of quickstart: one by one {r['one_by_one_s']:.1f} s, `--parallel {r['parallel']}` "
            f"{r['parallel_s']:.1f} s ({r['speedup']:.2f}x)")


def _profile() -> str:
    from round_profile import describe, measure

    early, each = measure("bench-w1"), measure("bench-w1", reduce_early=False)
    w2, w4 = measure("bench-w2"), measure("bench-w4", rounds=2)
    return (f"bench-w1 vectorised, inline, mean per round, in one process: with early reduction (a cohort's one "
            f"partial result) {describe(early)}. With one reply per client (`run.reduce_early = false`, as before "
            f"it): {describe(each)}. Round: {early['round'] / each['round']:.2f}x.\n\n"
            f"bench-w2 (100 of 10,000 devices a round), the same way: {describe(w2)}.\n\n"
            f"bench-w4 (50 clients a round, 1.6M parameters; 2 rounds), the same way: {describe(w4)}.")


def _gpu() -> str:
    return ("missing: no NVIDIA GPU was available where these figures were made. On a machine with one, "
            "`bash benchmarks/gpu_check.sh` runs W3, W4 and W5 (ResNet-18) on the GPU one client after another, "
            "vectorised with one reply per client (before early reduction) and vectorised with early reduction (and "
            "W4 on Ray with 4 actors sharing it), prints the table with the card's name, then where a W4 and a W5 "
            "round's time goes with and without early reduction.")


MICRO = {"profile": _profile, "fedld": _fedld, "dp": _dp, "scale": _scale, "sweep": _sweep}


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    import flwr
    import ray
    import torch

    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, flwr {flwr.__version__}, "
            f"ray {ray.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="workload names to run (default: all)")
    args = parser.parse_args()
    console = Console()
    about = (f"Command: `make bench` ({time.strftime('%Y-%m-%d')}). Wall time includes imports and Ray start-up; "
             "steady-state is the mean seconds per round over rounds 2..R (round 2 alone: its sampled clients are "
             "nearly all new, so no partition is cached yet); ratios are to the plain PyTorch loop "
             "(or to fedsim-sequential where there is no plain loop). Peak RSS is the whole process tree (Ray's "
             "processes included). Every runner trains with `run.resources.num_cpus` (1) torch threads per client "
             "and evaluates the global model on the test set after every round. fedsim-sequential: inline, "
             "`run.vectorize = false`; fedsim-vectorized: inline, `true`; fedsim-ray: 2 actors, `true`.")
    lines = ["# Benchmark results", "", f"Machine: {machine()}", "", about, ""]
    for name, (scenario, sets, runners) in WORKLOADS.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        results = {r: run_one(r, scenario, sets) for r in runners}
        base = results.get("plain") or results["fedsim-sequential"]
        accuracies = {r: res["final"].get("accuracy") for r, res in results.items()}
        same = max(accuracies.values()) - min(accuracies.values()) <= 0.01
        table = Table(title=f"{name}: {scenario} {' '.join(sets)}")
        header = ["runner", "wall s", "x base", "steady s/round", "x base", "round 2 s", "peak RSS MB",
                  "final accuracy"]
        for col in header:
            table.add_column(col, justify="left" if col == "runner" else "right")
        lines += [f"## {name}: `{scenario}` {' '.join(sets)}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for runner, res in results.items():
            row = [runner, f"{res['wall_s']:.1f}", f"{res['wall_s'] / base['wall_s']:.2f}", f"{res['steady_s']:.4f}",
                   f"{res['steady_s'] / base['steady_s']:.2f}", f"{res['round_s'][1]:.4f}", f"{res['peak_rss_mb']:.0f}",
                   f"{accuracies[runner]:.4f}"]
            table.add_row(*row)
            lines.append("| " + " | ".join(row) + " |")
        verdict = "all runners reach the same final accuracy (within 0.01)" if same else "ACCURACIES DIFFER"
        notes = scenario_notes(scenario) if {"plain", "stock-flower"} & set(runners) else ""
        if notes:
            verdict = f"{notes}; final accuracies within 0.01" if same else f"{notes}, so final accuracies differ"
        console.print(table)
        console.print(verdict)
        lines += ["", verdict, ""]
    for key, title in (("profile", "Where a vectorised round goes (W1, W2, W4)"), ("fedld", "FedLD aggregation"),
                       ("dp", "DP-SGD overhead"), ("scale", "Scale: 100,000 clients"), ("sweep", "Parallel sweeps")):
        if not args.only or key in args.only:
            text = MICRO[key]()
            console.print(f"{title}: {text}")
            lines += [f"## {title}", "", text, ""]
    if args.only:
        return  # RESULTS.md always holds a complete run
    lines += ["## GPU", "", _gpu() if not gpu_available() else "run `bash benchmarks/gpu_check.sh` on this machine "
              "and add its table here", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    console.print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
