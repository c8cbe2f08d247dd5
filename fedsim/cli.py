"""The `fedsim` command: run, list, validate, show, plot, partition.

Errors a user can cause print one line `error: <where>: <what>; <fix>` on stderr and exit with code 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedsim.errors import FedsimError
from fedsim.scenario import Scenario, describe, parse_overrides, shipped_scenarios

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated-learning and privacy simulation on Flower.")
out_console = Console()
err_console = Console(stderr=True)

ScenarioArg = Annotated[str, typer.Argument(help="Scenario file, or the name of a shipped scenario (fedsim list).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a field: --set data.partitioner.alpha=0.1")]


SHORT = {"accuracy": "acc"}


def _fmt(value: object) -> str:
    if value is None:  # a run dir's null: a number the run produced that was not finite
        from fedsim.results import NOT_FINITE

        return NOT_FINITE
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metric_table(rows: list[dict], title: str, max_rows: int | None = None) -> Table:
    if max_rows and len(rows) > max_rows:
        step = -(-len(rows) // max_rows)
        rows = [r for r in rows if (r["round"] - 1) % step == 0 or r is rows[-1]]
    train_keys = sorted({k for r in rows for k in r["train"]} & {"loss", "accuracy"})
    eval_keys = sorted({k for r in rows for k in r["eval"]})
    private = any("privacy" in r for r in rows)
    table = Table(title=title)
    table.add_column("round", justify="right")
    for k in train_keys:
        table.add_column(f"train {SHORT.get(k, k)}", justify="right")
    for k in eval_keys:
        table.add_column(f"test {SHORT.get(k, k)}", justify="right", style="bold" if k in ("accuracy", "mse") else None)
    if private:
        table.add_column("epsilon", justify="right")
    table.add_column("clients", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("time s", justify="right")
    for r in rows:
        privacy = [_fmt(r.get("privacy", {}).get("epsilon", ""))] if private else []
        table.add_row(str(r["round"]), *(_fmt(r["train"].get(k, "")) for k in train_keys),
                      *(_fmt(r["eval"].get(k, "")) for k in eval_keys), *privacy,
                      str(r.get("replies", "")), str(r.get("failures", "")), f"{r['time_s']:.2f}")
    return table


@app.command()
def run(
    scenario: Annotated[str | None, typer.Argument(
        help="Scenario file, or the name of a shipped scenario (fedsim list).")] = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<name>-<timestamp>).")] = None,
    runtime: Annotated[str | None, typer.Option(help="inline | ray (overrides run.runtime).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Attach to an existing Ray cluster: auto | HOST:PORT (also $RAY_ADDRESS, run.ray_address).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue an interrupted run dir from its last checkpoint (no SCENARIO then).")] = None,
    vectorize: Annotated[bool | None, typer.Option(
        "--vectorize/--no-vectorize", help="Train each round's clients together (default: run.vectorize, auto).",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table; print the run dir.")] = False,
) -> None:
    """Run a scenario and write its run directory (Ctrl-C / SIGTERM: finish the round, checkpoint, exit 130)."""
    if resume is not None:
        from fedsim import runner

        if scenario or set_ or out or ray_address or vectorize is not None:
            raise FedsimError("--resume", "continues a run exactly as it was set up",
                              "pass only the run dir (and optionally --runtime)")
        sc, state = runner.resumable(resume)
        name, rounds, done = sc.run.name, sc.run.rounds, state["round"]
        job = functools.partial(runner.run_from_checkpoint, resume, sc, state, runtime=runtime)
    else:
        if scenario is None:
            raise FedsimError("fedsim run", "no scenario given", "pass a scenario file or name (fedsim list)")
        overrides: dict = dict(parse_overrides(set_))
        if runtime:
            overrides["run.runtime"] = runtime
        if vectorize is not None:
            overrides["run.vectorize"] = vectorize
        if ray_address:
            overrides["run.ray_address"] = ray_address
            overrides.setdefault("run.runtime", "ray")
        sc = Scenario.load(scenario, overrides)  # a typo or a bad field is answered before torch and Flower load
        from fedsim import runner

        name, rounds, done = sc.run.name, sc.run.rounds, 0
        job = functools.partial(runner.run, sc, out)
    if sc.privacy is not None and getattr(sc.privacy, "accountant", None) == "gdp":
        err_console.print("note: privacy.accountant = 'gdp' reports a central-limit estimate of epsilon, which can "
                          "be below the true epsilon; use 'rdp' or 'prv' for an upper bound", markup=False,
                          highlight=False, soft_wrap=True)
    with _stop_after_round() as stop:
        try:
            _run_with_progress(functools.partial(job, stop=stop), name, rounds, quiet, done)
        except (runner.Interrupted, KeyboardInterrupt) as exc:
            run_dir = getattr(exc, "run_dir", None)
            done = f"stopped after round {exc.server_round}, checkpoint written" \
                if isinstance(exc, runner.Interrupted) else "interrupted"
            where = f"; resume with: fedsim run --resume {run_dir}" if run_dir else \
                "; no round had finished, so the run dir was removed"
            err_console.print(done + where, markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None


@contextlib.contextmanager
def _stop_after_round():
    """Ctrl-C or SIGTERM: finish the current round, write its checkpoint and stop; a second one stops now."""
    stop_requested = threading.Event()

    def handler(signum, frame) -> None:
        if stop_requested.is_set():
            raise KeyboardInterrupt
        stop_requested.set()
        err_console.print("stopping after this round (Ctrl-C again to stop now)", markup=False, highlight=False)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop_requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _run_with_progress(job, name: str, rounds: int, quiet: bool, done: int = 0) -> None:
    """`job(on_round)` is fedsim.run or fedsim.runner.resume with its arguments bound; `done` rounds are
    already complete (a resumed run)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        result = job(None)
        out_console.print(str(result.run_dir))
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[metrics]}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"{name} round", total=rounds, completed=done,
                                 metrics="resuming" if done else "preparing")

        def on_round(row: dict) -> None:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in row["eval"].items())
            progress.update(task, completed=row["round"], metrics=shown)

        result = job(on_round)
    out_console.print(_metric_table(result.metrics, f"{name}: central evaluation", max_rows=10))
    _print_unlearning(result)
    startup = result.summary.get("startup_s")
    _print_line(f"final: {_metrics_text(result.final)} | wall time {result.summary['wall_time_s']:.1f} s"
                + (f" (start-up {startup:.1f} s)" if startup is not None else "") + f" | run dir: {result.run_dir}")
    if "stopped" in result.summary:
        _print_line(f"stopped after round {result.summary['rounds']}: {result.summary['stopped']}")


@app.command(name="list")
def list_scenarios() -> None:
    """List the shipped scenarios."""
    table = Table(title="shipped scenarios (fedsim run NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, path in shipped_scenarios().items():
        table.add_row(name, describe(path))
    out_console.print(table)


@app.command()
def validate(scenario: ScenarioArg, set_: SetOpt = None) -> None:
    """Check a scenario (schema, data, model, strategy) without running it."""
    from fedsim.server import prepare

    sc = Scenario.load(scenario, list(set_ or []))
    prepared = prepare(sc)
    out_console.print(
        f"ok: {scenario}: {sc.data.dataset} ({prepared.data.info.task}), {prepared.data.num_partitions} clients "
        f"({sc.data.partitioner.name}), {sc.model.name}, {sc.strategy.name}, {sc.run.rounds} rounds"
    )
    for r in sc.unlearning.requests if sc.unlearning else []:
        out_console.print(f"unlearning: {r.kind} {r.target} after round {r.at_round}: {', '.join(r.method)}",
                          markup=False, highlight=False)


def _print_table(header: list[str], rows: list[list[str]], title: str, markdown: bool = False) -> None:
    """A rich table, or Markdown printed as plain text (never wrapped)."""
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    table = Table(title=title)
    for col in header:
        table.add_column(col, justify="left" if col in ("setting", "request", "method") else "right")
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


def _metrics_text(values: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in (values or {}).items()) or "n/a"


def _print_unlearning(result) -> None:
    """The run's unlearning table (one row per method of each request), if it served any."""
    from fedsim.compare import Group, unlearning_rows

    header, rows = unlearning_rows([Group(result.scenario.run.name, [result])])
    if not rows:
        return
    history = result.summary.get("history", {})
    requests = sorted({r[1] for r in rows})
    keep = [2, *range(4, len(header))] if len(requests) == 1 else [1, 2, *range(4, len(header))]
    _print_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows],
                 f"unlearning {', '.join(requests)} (history store: {history.get('rounds', 0)} rounds, "
                 f"{history.get('bytes', 0) / 1e6:.1f} MB)")


def _print_line(text: str) -> None:
    """A result line, never wrapped or marked up (so `| tail -1` keeps the numbers when piped)."""
    out_console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="A run directory (finished, running or interrupted).")]) -> None:
    """Print a run's metrics per round and its summary."""
    from fedsim.results import load_run

    result = load_run(run_dir, unfinished=True)
    out_console.print(_metric_table(result.metrics, f"{result.scenario.run.name} ({run_dir})"))
    best = result.summary.get("best")
    best_text = f"round {best['round']}, " + _metrics_text({k: v for k, v in best.items() if k != "round"}) \
        if best else "n/a"
    _print_line(f"final: {_metrics_text(result.final)} | best: {best_text} | wall time "
                f"{result.summary['wall_time_s']:.1f} s")
    if result.summary.get("unfinished"):
        _print_line(f"unfinished: {result.summary['rounds']} of {result.scenario.run.rounds} rounds so far "
                    f"(running, or resume with: fedsim run --resume {run_dir})")
    _print_unlearning(result)


@app.command()
def plot(run_dir: Annotated[Path, typer.Argument(help="A run directory (finished, running or interrupted).")]) -> None:
    """Write RUN_DIR/plots/metrics.png (test accuracy or mse, and loss, per round; epsilon spent on DP runs,
    the unlearning requests marked)."""
    from fedsim.plots import plot_run
    from fedsim.results import load_run

    _print_line(str(plot_run(load_run(run_dir, unfinished=True))))


TABLE_MAX_CLIENTS = 40  # `fedsim partition` lists the first and last 20 clients beyond this


@app.command()
def partition(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    png: Annotated[Path | None, typer.Option(help="Heatmap path (default: <output.dir>/<name>-partitions.png).")] = None,
) -> None:
    """Per-client label counts as a table, and a label-distribution heatmap PNG."""
    from fedsim.data import federated_data
    from fedsim.plots import HEATMAP_MAX_CLIENTS, plot_partitions

    sc = Scenario.load(scenario, list(set_ or []))
    data = federated_data(sc.data, sc.run.seed)
    counts = data.label_counts()
    classification = data.info.task == "classification"
    per_class = ", columns: examples per class" if classification else ""
    table = Table(title=f"{sc.run.name}: {sc.data.dataset}, {sc.data.partitioner.name} partitioner{per_class}")
    table.add_column("client", justify="right")
    table.add_column("total", justify="right", style="bold")
    for c in range(counts.shape[1] if classification else 0):
        table.add_column(str(c), justify="right")
    shown = range(len(counts)) if len(counts) <= TABLE_MAX_CLIENTS else \
        [*range(TABLE_MAX_CLIENTS // 2), *range(len(counts) - TABLE_MAX_CLIENTS // 2, len(counts))]
    for i in shown:
        row = counts[i]
        if i == len(counts) - TABLE_MAX_CLIENTS // 2 and len(counts) > TABLE_MAX_CLIENTS:
            table.add_row("...", f"{len(counts) - TABLE_MAX_CLIENTS} more", *([""] * (counts.shape[1] if classification else 0)))
        table.add_row(str(i), str(int(row.sum())), *([str(int(v)) for v in row] if classification else []))
    out_console.print(table)
    changed = ", ".join(f"{k}={v}" for k, v in parse_overrides(set_).items())
    title = f"{sc.run.name}: examples per client and class" + (f" ({changed})" if changed else "")
    path = png or Path(sc.output.dir) / f"{sc.run.name}-partitions.png"
    what = "summary" if data.num_partitions > HEATMAP_MAX_CLIENTS else "heatmap"
    _print_line(f"{what}: {plot_partitions(data, path, title)}")


@app.command()
def sweep(
    sweep_file: Annotated[str, typer.Argument(help="Sweep file, or a shipped sweep's name (scenarios/sweeps/).")],
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the run dirs (default: runs/<sweep name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip finished runs, continue interrupted ones.")] = False,
    parallel: Annotated[int, typer.Option(min=1, help="Runs at once, each in its own process.")] = 1,
    ray_address: Annotated[str | None, typer.Option(
        help="Spread the runs over this Ray cluster (HOST:PORT or auto), each a Ray task.")] = None,
) -> None:
    """Run a base scenario over a grid of overrides and seeds (see fedsim/sweep.py for the file format); one line
    per finished run. Ctrl-C: the current run stops after its round (checkpointed); --resume continues."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsim.sweep import load_sweep, plan, run_sweep

    spec, path = load_sweep(sweep_file)
    spec = spec.model_copy(update={"set": {**spec.set, **parse_overrides(set_)}})
    folder = out or Path("runs") / path.stem
    total = len(plan(spec, folder))  # validates every combination before running any
    with _stop_after_round() as stop, Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                               MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                                               transient=True) as progress:
        task = progress.add_task("sweep", total=total)

        def on_start(run, index: int, count: int) -> None:
            progress.update(task, completed=index, description=f"{run.label} seed {run.seed}")

        def on_end(run, index: int, count: int) -> None:
            head = f"[{index + 1}/{count}] {run.label} seed {run.seed}:"
            if run.status in ("done", "skipped"):
                what = "finished before, skipped" if run.status == "skipped" else \
                    f"{run.result.summary['wall_time_s']:.1f} s"
                text = f"{head} {_metrics_text(run.result.final)} ({what}) -> {run.run_dir}"
            elif run.status == "failed":
                text = f"{head} FAILED: {run.error}"
            else:
                text = f"{head} stopped, checkpoint kept in {run.run_dir}"
            out_console.print(text, markup=False, highlight=False, soft_wrap=True)

        runs = run_sweep(spec, folder, resume=resume, stop=stop, parallel=parallel, ray_address=ray_address,
                         on_start=on_start, on_end=on_end)
    done = [r for r in runs if r.status in ("done", "skipped")]
    failed = [r for r in runs if r.status == "failed"]
    again = f"fedsim sweep {sweep_file} --resume" + (f" --out {folder}" if out else "")
    if stop.is_set():
        err_console.print(f"sweep stopped: {len(done)} of {total} runs finished; continue with: {again}",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    _print_line(f"{len(done)} runs in {folder}" + (f", {len(failed)} failed (see above)" if failed else "")
                + f"; compare them with: fedsim compare {folder}/*")
    if failed:
        raise typer.Exit(1)


def default_compare_png(run_dirs: list[Path]) -> Path:
    """Beside the runs' folder (runs/my-sweep-compare.png for runs/my-sweep/*, so a rerun's glob does not pick it
    up), or inside it when beside would be the working directory (runs/compare.png for runs/a runs/b)."""
    parent = run_dirs[0].resolve().parent
    beside = parent.with_name(f"{parent.name}-compare.png")
    return parent / "compare.png" if beside.parent == Path.cwd().resolve() else beside


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories; runs sharing a run name are seeds.")],
    target: Annotated[float | None, typer.Option(help="Report rounds to reach this accuracy (or mse).")] = None,
    png: Annotated[Path | None, typer.Option(help="Overlay plot (default: <runs' folder>-compare.png beside it).")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead.")] = False,
    x: Annotated[str | None, typer.Option(help="Also plot the final metric against this field, e.g. bags.rho.")] = None,
    lines: Annotated[str | None, typer.Option(help="With --x: fields that tell lines apart, e.g. bags.k,bags.epsilon.")] = None,
) -> None:
    """Table of final/best metric (mean ± std over seeds) and rounds to a target, plus an overlay plot."""
    from fedsim.compare import (
        gap_significance,
        load_groups,
        plot_against,
        plot_groups,
        plot_privacy_utility,
        plot_unlearning,
        summary_rows,
        unlearning_rows,
    )

    files = [d for d in run_dirs if d.is_file()]  # e.g. a plot that `runs/*` also matched
    run_dirs = [d for d in run_dirs if not d.is_file()]
    if files:
        err_console.print(f"note: skipped {len(files)} file(s) that are not run dirs ({files[0]}, ...)",
                          markup=False, highlight=False, soft_wrap=True)
    if not run_dirs:
        raise FedsimError("fedsim compare", "no run directories given", "pass run dirs, e.g. runs/my-sweep/*")
    groups = load_groups(run_dirs)
    header, rows = summary_rows(groups, target)
    _print_table(header, rows, f"{len(run_dirs)} runs, {len(groups)} settings", markdown)
    header, rows = unlearning_rows(groups)
    if rows:
        _print_table(header, rows, "unlearning (mean ± std over seeds)", markdown)
        for line in gap_significance(groups):
            out_console.print(line, markup=False, highlight=False, soft_wrap=True)
    path = plot_groups(groups, png or default_compare_png(run_dirs))
    (err_console if markdown else out_console).print(f"plot: {path}")
    utility = plot_privacy_utility(groups, path.with_name(path.stem + "-privacy-utility.png"))
    if utility:
        (err_console if markdown else out_console).print(f"privacy-utility plot: {utility}")
    unlearning = plot_unlearning(groups, path.with_name(path.stem + "-unlearning.png"))
    if unlearning:
        (err_console if markdown else out_console).print(f"unlearning plot: {unlearning}")
    if x:
        against = path.with_name(f"{path.stem}-vs-{x.replace('.', '-')}.png")
        for line in plot_against(groups, x, [k for k in (lines or "").split(",") if k], against):
            out_console.print(line, markup=False, highlight=False, soft_wrap=True)
        (err_console if markdown else out_console).print(f"plot against {x}: {against}")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (finished, running or interrupted).")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page (plots embedded, works offline): scenario, curves, partitions, privacy ledger,
    unlearning table, faults and runtime of each run, and a comparison when there are several."""
    from fedsim.report import write_report

    _print_line(f"report: {write_report(run_dirs, out)}")


privacy_app = typer.Typer(no_args_is_help=True, help="Privacy calculator (Opacus accountants).")
app.add_typer(privacy_app, name="privacy")
SampleRateOpt = Annotated[float, typer.Option(help="Poisson sampling rate q.")]
StepsOpt = Annotated[int, typer.Option(help="Number of noisy steps composed.")]
DeltaOpt = Annotated[float, typer.Option(help="Target delta.")]
AccountantOpt = Annotated[str, typer.Option(help="rdp | prv | gdp")]
JsonOpt = Annotated[bool, typer.Option("--json", help="All fields as JSON.")]


def _print_ledger(noise: float, sample_rate: float, steps: int, delta: float, accountant: str, as_json: bool,
                  headline: float) -> None:
    from fedsim.privacy import Ledger, epsilon

    ledger = Ledger(epsilon(noise, sample_rate, steps, delta, accountant), delta, accountant, noise, sample_rate, steps)
    print(json.dumps(ledger.to_dict()) if as_json else f"{headline:.6g}")


@privacy_app.command("epsilon")
def privacy_epsilon(noise_multiplier: Annotated[float, typer.Option(help="Gaussian noise std / clipping norm.")],
                    sample_rate: SampleRateOpt, steps: StepsOpt, delta: DeltaOpt, accountant: AccountantOpt = "rdp",
                    json_out: JsonOpt = False) -> None:
    """Epsilon of a subsampled Gaussian mechanism composed over STEPS."""
    from fedsim.privacy import epsilon

    eps = epsilon(noise_multiplier, sample_rate, steps, delta, accountant)
    _print_ledger(noise_multiplier, sample_rate, steps, delta, accountant, json_out, eps)


@privacy_app.command("noise")
def privacy_noise(target_epsilon: Annotated[float, typer.Option(help="The budget.")], sample_rate: SampleRateOpt,
                  steps: StepsOpt, delta: DeltaOpt, accountant: AccountantOpt = "rdp", json_out: JsonOpt = False) -> None:
    """The smallest noise multiplier that keeps epsilon within TARGET_EPSILON."""
    from fedsim.privacy import noise_multiplier

    sigma = noise_multiplier(target_epsilon, sample_rate, steps, delta, accountant)
    _print_ledger(sigma, sample_rate, steps, delta, accountant, json_out, sigma)


@privacy_app.command("bag-size")
def privacy_bag_size(
    n: Annotated[int, typer.Option("--n", help="Examples (responses) to bag.")],
    d: Annotated[int, typer.Option("--d", help="Features.")],
    epsilon: Annotated[float | None, typer.Option(help="Label-DP epsilon of the Laplace release (omit: none).")] = None,
    rho: Annotated[float, typer.Option(help="0 bag-level .. 1 instance-level.")] = 0.0,
    snr: Annotated[float, typer.Option(help="|theta|^2 / noise variance.")] = 1.0,
    clip: Annotated[float, typer.Option(help="Clip constant C (bound C sqrt(log n)).")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """Predicted risk of the interpolating linear estimator for every bag size k, and the best k."""
    from fedsim.bag_theory import optimal_bag_size
    from fedsim.privacy import check

    check("", epsilon=epsilon, sample_rate=None)
    if n < 2 or d < 1 or not 0 <= rho <= 1 or snr < 0 or clip <= 0:
        raise FedsimError("bag-size", f"need n >= 2, d >= 1, 0 <= rho <= 1, snr >= 0, clip > 0 (got n={n}, d={d}, "
                          f"rho={rho}, snr={snr}, clip={clip})", "fix the option")
    best, risks = optimal_bag_size(n, d, epsilon, rho, snr, clip)
    if math.isinf(risks[best]):
        raise FedsimError("bag-size", f"no bag size gives a finite risk: {n} examples cannot fit {d} features "
                          "(the Gram matrix needs more effective examples than d + 1)",
                          f"raise --n above {d + 2} (times k for bag-level), or lower --d")
    if json_out:
        print(json.dumps({"best_k": best, "risk": {str(k): r for k, r in risks.items()}, "n": n, "d": d,
                          "epsilon": epsilon, "rho": rho, "snr": snr, "clip": clip}))
        return
    table = Table(title=f"predicted risk, n={n} d={d} epsilon={epsilon} rho={rho} snr={snr}")
    table.add_column("k", justify="right")
    table.add_column("predicted risk", justify="right")
    shown = sorted({*range(1, min(len(risks), 10) + 1), best, len(risks)})
    for k in shown:
        table.add_row(str(k), f"{risks[k]:.5g}", style="bold" if k == best else None)
    out_console.print(table)
    out_console.print(f"best k: {best}")


def main() -> None:
    try:
        app()
    except FedsimError as exc:
        if getattr(exc, "run_dir", None) is not None:  # a run that can be resumed (e.g. after a failed write)
            exc.fix = exc.fix.replace("RUN_DIR", str(exc.run_dir))
        for line in exc.lines():
            err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # (typer turns one raised inside a command into exit 130 itself)
        err_console.print("interrupted", markup=False, highlight=False)
        sys.exit(130)
