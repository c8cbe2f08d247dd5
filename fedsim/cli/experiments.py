"""`fedsim sweep` and `compare`: a grid of runs, and their comparison over seeds."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from fedsim.cli.common import SetOpt, err_console, out_console
from fedsim.cli.render import metrics_text, print_line, print_table
from fedsim.cli.running import stop_after_round
from fedsim.errors import FedsimError
from fedsim.scenario import parse_overrides


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
    with stop_after_round() as stop, Progress(TextColumn("[bold]{task.description}"), BarColumn(),
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
                text = f"{head} {metrics_text(run.result.final)} ({what}) -> {run.run_dir}"
            elif run.status == "failed":
                text = f"{head} FAILED: {run.error}"
            else:
                text = f"{head} stopped, checkpoint kept in {run.run_dir}"
            out_console.print(text, markup=False, highlight=False, soft_wrap=True)

        runs = run_sweep(spec, folder, resume=resume, stop=stop, parallel=parallel, ray_address=ray_address,
                         on_start=on_start, on_end=on_end)
    done = [r for r in runs if r.status in ("done", "skipped")]
    failed = [r for r in runs if r.status == "failed"]
    again = " ".join(["fedsim sweep", shlex.quote(sweep_file), *(f"--set {shlex.quote(o)}" for o in set_ or []),
                      "--resume", *([f"--out {shlex.quote(str(folder))}"] if out else []),
                      *([f"--parallel {parallel}"] if parallel > 1 else []),
                      *([f"--ray-address {shlex.quote(ray_address)}"] if ray_address else [])])
    if stop.is_set():
        err_console.print(f"sweep stopped: {len(done)} of {total} runs finished; continue with: {again}",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    print_line(f"{len(done)} runs in {folder}" + (f", {len(failed)} failed (see above)" if failed else "")
                + f"; compare them with: fedsim compare {folder}/*")
    if failed:
        raise typer.Exit(1)

def default_compare_png(run_dirs: list[Path]) -> Path:
    """Beside the runs' folder (runs/my-sweep-compare.png for runs/my-sweep/*, so a rerun's glob does not pick it
    up), or inside it when beside would be the working directory (runs/compare.png for runs/a runs/b)."""
    parent = run_dirs[0].resolve().parent
    beside = parent.with_name(f"{parent.name}-compare.png")
    return parent / "compare.png" if beside.parent == Path.cwd().resolve() else beside

def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories; runs sharing a run name are seeds.")],
    target: Annotated[float | None, typer.Option(help="Report rounds to reach this accuracy (or mse).")] = None,
    png: Annotated[Path | None,
                   typer.Option(help="Overlay plot (default: <runs' folder>-compare.png beside it).")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead.")] = False,
    x: Annotated[str | None, typer.Option(help="Also plot the final metric against this field, e.g. bags.rho.")] = None,
    lines: Annotated[str | None,
                     typer.Option(help="With --x: fields that tell lines apart, e.g. bags.k,bags.epsilon.")] = None,
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
    if target is not None and (target < 0 or groups[0].key == "accuracy" and target > 1):
        raise FedsimError("--target", f"{target:g} is outside the range of {groups[0].key}",
                          "an accuracy target lies in [0, 1] (e.g. 0.9), an mse target is at least 0")
    header, rows = summary_rows(groups, target)
    print_table(header, rows, f"{len(run_dirs)} runs, {len(groups)} settings", markdown)
    header, rows = unlearning_rows(groups)
    if rows:
        print_table(header, rows, "unlearning (mean ± std over seeds)", markdown)
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
