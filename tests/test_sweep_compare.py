"""Sweeps expand a grid over seeds; compare groups seeds and summarises them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedsim.compare import load_groups, summary_rows
from fedsim.errors import ScenarioError
from fedsim.sweep import SweepFile, expand, load_sweep, run_sweep, shipped_sweeps


def test_expand_grid_and_seeds():
    sweep = SweepFile(base="quickstart", seeds=[0, 1], set={"run.rounds": 2},
                      grid={"data.partitioner.alpha": [0.1, 1.0],
                            "strategy": [{"name": "fedavg"}, {"name": "fedprox", "proximal_mu": 0.1}]})
    plan = list(expand(sweep))
    assert len(plan) == 8
    labels = sorted({label for label, _, _ in plan})
    assert labels == ["alpha0.1-fedavg", "alpha0.1-fedprox-0.1", "alpha1.0-fedavg", "alpha1.0-fedprox-0.1"]
    _, seed, scenario = next(p for p in plan if p[0] == "alpha0.1-fedprox-0.1" and p[1] == 1)
    assert seed == 1 and scenario.run.seed == 1 and scenario.run.rounds == 2
    assert scenario.strategy.name == "fedprox" and scenario.strategy.params == {"proximal_mu": 0.1}
    assert scenario.run.name == "quickstart-alpha0.1-fedprox-0.1"


def test_shipped_sweeps_are_valid():
    sizes = {"fedld-compare-digits": 36, "fedld-compare-leaf": 36, "dp-utility": 8, "aggregate-rho": 20,
             "unlearn-client": 10, "unlearn-class": 10, "unlearn-regression": 10, "unlearn-federaser-interval": 9}
    assert set(sizes) == set(shipped_sweeps())
    for name, size in sizes.items():
        sweep, _ = load_sweep(name)
        assert len(list(expand(sweep))) == size


def test_bad_sweep_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "quickstart"\nseedz = [1]\n')
    with pytest.raises(ScenarioError, match="seedz"):
        load_sweep(str(bad))
    bad.write_text('base = "quickstart"\n[grid]\n"strategy.name" = ["fedavgg"]\n')
    with pytest.raises(ScenarioError, match="did you mean 'fedavg'"):
        list(expand(load_sweep(str(bad))[0]))


def test_run_and_compare(tmp_path, cli):
    sweep = SweepFile(base="quickstart", seeds=[0, 1],
                      set={"run.rounds": 3, "data.partitioner.num_partitions": 4,
                           "data.partitioner.min_partition_size": 5},
                      grid={"strategy.name": ["fedavg", "fedld"]})
    dirs = [r.run_dir for r in run_sweep(sweep, tmp_path / "sweep")]
    assert len(dirs) == 4 and all((d / "summary.json").is_file() for d in dirs)
    groups = load_groups(dirs)
    assert [g.name for g in groups] == ["quickstart-fedavg", "quickstart-fedld"]
    header, rows = summary_rows(groups, target=0.5)
    assert header[-1] == "rounds to 0.5" and rows[0][1] == "2"
    finals = [g.curves()[:, -1] for g in groups]
    mean, std = rows[0][2].split(" ± ")
    assert float(mean) == pytest.approx(finals[0].mean(), abs=1e-4)
    assert float(std) == pytest.approx(np.std(finals[0], ddof=1), abs=1e-4)
    code, out, _ = cli("compare", *map(str, dirs), "--target", "0.5", "--markdown", "--png", str(tmp_path / "c.png"))
    assert code == 0 and out.startswith("| setting | seeds |") and Path(tmp_path / "c.png").is_file()


def test_privacy_utility_plot(tmp_path, cli):
    sweep = SweepFile(base="dp-sgd", seeds=[0], grid={"privacy.noise_multiplier": [1.0, 3.0]},
                      set={"run.rounds": 2, "privacy.target_epsilon": 1000.0, "data.partitioner.num_partitions": 3})
    dirs = [r.run_dir for r in run_sweep(sweep, tmp_path / "dp")]
    code, out, _ = cli("compare", *map(str, dirs), "--png", str(tmp_path / "c.png"))
    assert code == 0 and "privacy-utility plot" in out and (tmp_path / "c-privacy-utility.png").is_file()
    assert "final epsilon" in out
    eps = [load_groups([d])[0].runs[0].summary["privacy"]["epsilon"] for d in dirs]
    assert eps[0] > eps[1]  # more noise, less epsilon


def test_plot_against_a_field_with_prediction(tmp_path, cli):
    sweep = SweepFile(base="aggregate-responses", seeds=[0], grid={"bags.rho": [0.0, 1.0]},
                      set={"run.rounds": 2, "data.generator.n_samples": 3000, "data.partitioner.num_partitions": 3})
    dirs = [r.run_dir for r in run_sweep(sweep, tmp_path / "agg")]
    code, out, _ = cli("compare", *map(str, dirs), "--x", "bags.rho", "--lines", "bags.k", "--png",
                       str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c-vs-bags-rho.png").is_file()
    assert "k=8: best measured bags.rho" in out and "predicted optimum" in out


def _unlearning_group(gaps: dict[str, list[float]]):
    """A Group of fake runs (one per seed) whose summaries hold these Avg. Gaps per method."""
    from types import SimpleNamespace

    from fedsim.compare import Group

    request = {"kind": "client", "target": 3, "at_round": 20}
    seeds = len(next(iter(gaps.values())))
    runs = [SimpleNamespace(scenario=SimpleNamespace(run=SimpleNamespace(seed=s)),
                            summary={"unlearning": [{"method": "retrain", "request": request, "avg_gap": 0.0}] + [
                                {"method": m, "request": request, "avg_gap": v[s]} for m, v in gaps.items()]})
            for s in range(seeds)]
    return Group("unlearn-client", runs)


def test_gap_significance_is_holm_over_every_pair_of_methods():
    from scipy.stats import ttest_rel

    from fedsim.compare import gap_significance

    best = [1.0, 1.1, 0.9, 1.0, 1.05]
    far = [b + d for b, d in zip(best, [2.0, 2.1, 1.9, 2.2, 2.0])]
    close = [b + d for b, d in zip(best, [0.1, -0.2, 0.15, -0.05, 0.02])]
    (line,) = gap_significance([_unlearning_group({"far": far, "best": best, "close": close})])
    p_far, p_close, p_other = (ttest_rel(a, b).pvalue for a, b in ((far, best), (close, best), (far, close)))
    ranked = sorted([p_far, p_close, p_other])  # Holm over the 3 pairs: 3 p1, max(that, 2 p2), max(that, p3)
    holm = {ranked[0]: 3 * ranked[0]}
    holm[ranked[1]] = max(holm[ranked[0]], 2 * ranked[1])
    holm[ranked[2]] = max(holm[ranked[1]], ranked[2])
    assert "lowest Avg. Gap best (1.01)" in line and "over 5 seeds" in line and "over the 3 pairs" in line
    assert f"significantly larger: far (p={holm[p_far]:.3f})" in line
    assert f"not distinguishable: close (p={min(1.0, holm[p_close]):.3f})" in line
    assert gap_significance([_unlearning_group({"a": [1.0, 2.0], "b": [3.0, 4.0]})]) == []  # 2 seeds: no test


def test_significance_against_the_best_holds_its_level_when_the_best_is_picked_from_the_data():
    """Under the null (6 methods x 10 seeds, the README's sweep, every gap from one distribution with a seed effect
    the methods share), the share of sweeps in which some method is called significantly larger than the best stays
    within alpha. Testing each method only against the best, picked from the same data, exceeds it (about 10%)."""
    from scipy.stats import ttest_rel

    from fedsim.compare import compared_with_best, holm

    rng, sweeps, alpha = np.random.default_rng(0), 1000, 0.05
    every_pair = against_the_best_only = 0
    for _ in range(sweeps):
        seed_effect = rng.normal(size=10)
        gaps = {f"m{j}": dict(enumerate(seed_effect + rng.normal(size=10))) for j in range(6)}
        _, against, pairs = compared_with_best(gaps)
        assert pairs == 15 and len(against) == 5
        every_pair += any(p < alpha for _, p, _ in against)
        best = min(gaps, key=lambda m: np.mean(list(gaps[m].values())))
        others = np.array([list(gaps[m].values()) for m in gaps if m != best])
        p = ttest_rel(others, np.array([list(gaps[best].values())] * len(others)), axis=1).pvalue
        against_the_best_only += any(a < alpha for a in holm(list(p)))
    margin = 2 * math.sqrt(alpha * (1 - alpha) / sweeps)
    assert every_pair / sweeps <= alpha + margin
    assert against_the_best_only / sweeps > alpha + margin  # what the test tells apart


def test_holm_adjusts_step_down_and_keeps_the_order_given():
    from fedsim.compare import holm

    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])  # 3 x 0.01; max(.03, 2 x .03); max(.06, .04)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


SMALL = {"run.rounds": 3, "data.partitioner.num_partitions": 4, "data.partitioner.min_partition_size": 5}


def test_a_stopped_sweep_resumes_exactly_and_skips_finished_runs(tmp_path):
    import threading

    from fedsim.errors import RunDirError
    from fedsim.results import load_run, without_timings

    sweep = SweepFile(base="quickstart", seeds=[0, 1], set=SMALL)
    stop = threading.Event()
    first = run_sweep(sweep, tmp_path / "s", stop=stop,
                      on_start=lambda run, index, count: stop.set() if index == 1 else None)
    assert [r.status for r in first] == ["done", "stopped"]  # the second run stopped after its first round
    assert (first[1].run_dir / "checkpoint.pt").is_file()
    with pytest.raises(RunDirError, match="add --resume"):
        run_sweep(sweep, tmp_path / "s")
    again = run_sweep(sweep, tmp_path / "s", resume=True)
    assert [r.status for r in again] == ["skipped", "done"]
    fresh = run_sweep(sweep, tmp_path / "fresh")
    for a, b in zip(again, fresh):
        assert without_timings(load_run(a.run_dir).metrics) == without_timings(load_run(b.run_dir).metrics)


def test_a_failed_run_is_reported_and_the_sweep_goes_on(tmp_path):
    sweep = SweepFile(base="aggregate-labels", seeds=[0], grid={"bags.k": [5000, 2]},
                      set={"run.rounds": 1})
    runs = run_sweep(sweep, tmp_path / "s")
    assert [r.status for r in runs] == ["failed", "done"]
    assert "bags.k: bags of 5000" in runs[0].error and not runs[0].run_dir.exists()


def test_sweep_cli_set_resume_and_a_line_per_run(cli, tmp_path):
    spec = tmp_path / "sw.toml"
    spec.write_text('base = "quickstart"\nseeds = [0, 1]\n[set]\n"data.partitioner.num_partitions" = 4\n'
                    '"data.partitioner.min_partition_size" = 5\n')
    code, out, _ = cli("sweep", str(spec), "--set", "run.rounds=1", "--out", str(tmp_path / "o"))
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert code == 0 and len(lines) == 2 and lines[0].startswith("[1/2] base seed 0: loss ")
    assert all(len(load_rows(tmp_path / "o" / f"base-seed{s}")) == 1 for s in (0, 1))  # --set reached the runs
    code, _, err = cli("sweep", str(spec), "--set", "run.rounds=1", "--out", str(tmp_path / "o"))
    assert code == 2 and "add --resume" in err
    code, out, _ = cli("sweep", str(spec), "--set", "run.rounds=1", "--out", str(tmp_path / "o"), "--resume")
    assert code == 0 and out.count("finished before, skipped") == 2


def test_sweep_cli_ctrl_c_says_where_it_stopped(cli, tmp_path, monkeypatch):
    import contextlib
    import threading

    from fedsim.cli import experiments

    @contextlib.contextmanager
    def pressed():
        event = threading.Event()
        event.set()  # as if Ctrl-C came at once
        yield event

    monkeypatch.setattr(experiments, "stop_after_round", pressed)
    spec = tmp_path / "sw.toml"
    spec.write_text('base = "quickstart"\nseeds = [0, 1]\n')
    code, _, err = cli("sweep", str(spec), "--set", "run.rounds=60", "--set", "run.name=a b", "--out",
                       str(tmp_path / "o"))
    assert code == 130 and f"sweep stopped: 0 of 2 runs finished; continue with: fedsim sweep {spec} --set " \
        f"run.rounds=60 --set 'run.name=a b' --resume --out {tmp_path / 'o'}" in err  # the sweep as it was started


def test_a_sweep_resumes_only_its_own_runs_and_compare_refuses_mixed_set_ups(cli, tmp_path):
    from fedsim.errors import RunDirError

    with pytest.raises(ScenarioError, match="seeds.*seed 0 is listed 2 times"):
        spec = tmp_path / "twice.toml"
        spec.write_text('base = "quickstart"\nseeds = [0, 0]\n')
        load_sweep(str(spec))
    sweep = SweepFile(base="quickstart", seeds=[0, 1], set=SMALL)
    run_sweep(sweep, tmp_path / "s")
    other = sweep.model_copy(update={"set": {**SMALL, "run.rounds": 2}})
    with pytest.raises(RunDirError, match=r"base-seed0: was run with run\.rounds = 3, this sweep sets 2"):
        run_sweep(other, tmp_path / "s", resume=True)
    assert [r.status for r in run_sweep(sweep, tmp_path / "s", resume=True)] == ["skipped", "skipped"]
    # runs of one name but another set-up (a seed run again with more rounds) are not averaged together
    run_sweep(other.model_copy(update={"seeds": [2]}), tmp_path / "s")
    code, _, err = cli("compare", *(str(d) for d in sorted((tmp_path / "s").iterdir())))
    assert code == 2 and "the runs named 'quickstart-base' differ in run.rounds beyond their seed (3 in" in err, err


def load_rows(run_dir):
    from fedsim.results import load_run

    return load_run(run_dir).metrics


def test_compare_overlay_splits_many_settings_into_panels_with_distinct_styles(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from fedsim import plots
    from fedsim.compare import Group, plot_groups

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out, *a, **k: figures.append(fig) or out)
    groups = [Group(f"setting-{i:02d}", [SimpleNamespace(
        summary={"task": "classification"}, metrics=[{"eval": {"accuracy": 0.1 * i + 0.01 * r}} for r in range(5)])])
        for i in range(12)]
    plot_groups(groups, tmp_path / "c.png")
    shown = [ax for ax in figures[-1].axes if ax.get_visible()]
    assert len(shown) == 2  # 12 settings: panels of at most 8
    lines = [line for ax in shown for line in ax.get_lines()]
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 12  # every setting its own look
    assert all(ax.xaxis.get_major_locator()._integer for ax in shown)


def test_compare_writes_its_plot_next_to_the_runs_not_into_the_working_directory(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.toml"
    path.write_text('[run]\nname = "a"\nrounds = 1\n[data]\ndataset = "digits"\n[data.partitioner]\nname = "iid"\n'
                    'num_partitions = 2\n[model]\nname = "mlp"\n[strategy]\nname = "fedavg"\n')
    for seed in (0, 1):
        cli("run", str(path), "--set", f"run.seed={seed}", "--out", f"runs/a-{seed}")
    (tmp_path / "runs" / "a-partitions.png").write_bytes(b"not a run")
    code, _, err = cli("compare", "runs/a-0", "runs/a-1", "runs/a-partitions.png")
    assert code == 0 and "skipped 1 file(s)" in err
    assert (tmp_path / "runs" / "compare.png").is_file() and not list(tmp_path.glob("*.png"))
    (tmp_path / "runs" / "sweep").mkdir()
    for seed in (0, 1):
        (tmp_path / "runs" / f"a-{seed}").rename(tmp_path / "runs" / "sweep" / f"a-{seed}")
    code, _, _ = cli("compare", "runs/sweep/a-0", "runs/sweep/a-1")
    assert code == 0 and (tmp_path / "runs" / "sweep-compare.png").is_file()


@pytest.mark.slow  # spawned processes (~7 s); make test keeps sweeps one by one
def test_a_parallel_sweep_gives_the_runs_one_by_one_gives(tmp_path):
    from fedsim.results import without_timings

    sweep = SweepFile(base="quickstart", seeds=[0, 1, 2], set=SMALL, grid={"strategy.name": ["fedavg", "fedld"]})
    seen = []
    parallel = run_sweep(sweep, tmp_path / "p", parallel=2, on_end=lambda run, i, n: seen.append(i))
    one_by_one = run_sweep(sweep, tmp_path / "s")
    assert sorted(seen) == list(range(6)) and all(r.status == "done" for r in parallel)
    for a, b in zip(parallel, one_by_one):
        assert without_timings(a.result.metrics) == without_timings(b.result.metrics), a.label
