"""`fedsim run`: a scenario (or --resume of an interrupted run dir) with a progress bar, stopping cleanly on
Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from fedsim.cli.common import SetOpt, err_console, out_console
from fedsim.cli.render import metric_table, metrics_text, print_line, print_unlearning
from fedsim.errors import FedsimError
from fedsim.scenario import Scenario, parse_overrides


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
    with stop_after_round() as stop:
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
def stop_after_round():
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
    out_console.print(metric_table(result.metrics, f"{name}: central evaluation", max_rows=10))
    print_unlearning(result)
    startup = result.summary.get("startup_s")
    skipped = result.summary.get("skipped_rounds")
    print_line(f"final: {metrics_text(result.final)}"
               + (f" | {skipped} of {len(result.metrics)} rounds skipped (too few clients answered)" if skipped else "")
               + f" | wall time {result.summary['wall_time_s']:.1f} s"
               + (f" (start-up {startup:.1f} s)" if startup is not None else "") + f" | run dir: {result.run_dir}")
    because = result.summary.get("runtime", {}).get("one_by_one_because")
    if because:
        print_line(f"clients trained one by one: {because}")
    if "stopped" in result.summary:
        print_line(f"stopped after round {result.summary['rounds']}: {result.summary['stopped']}")
