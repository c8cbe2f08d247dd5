"""`fedsim show`, `plot` and `report`: what a run directory holds, as a table, a PNG or an HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsim.cli.common import out_console
from fedsim.cli.render import metric_table, metrics_text, print_line, print_unlearning


def show(run_dir: Annotated[Path, typer.Argument(help="A run directory (finished, running or interrupted).")]) -> None:
    """Print a run's metrics per round and its summary."""
    from fedsim.results import load_run
    from fedsim.run_lock import holder

    result = load_run(run_dir, unfinished=True)
    out_console.print(metric_table(result.metrics, f"{result.scenario.run.name} ({run_dir})"))
    best = result.summary.get("best")
    best_text = f"round {best['round']}, " + metrics_text({k: v for k, v in best.items() if k != "round"}) \
        if best else "n/a"
    print_line(f"final: {metrics_text(result.final)} | best: {best_text} | wall time "
                f"{result.summary['wall_time_s']:.1f} s")
    pid = holder(run_dir)
    if result.summary.get("unfinished") and pid is not None:
        print_line(f"live: {result.summary['rounds']} of {result.scenario.run.rounds} rounds so far, being written "
                   f"by process {pid}")
    elif result.summary.get("unfinished"):
        print_line(f"unfinished: {result.summary['rounds']} of {result.scenario.run.rounds} rounds so far, not "
                   f"running (stopped or killed): resume with: fedsim run --resume {run_dir}")
    print_unlearning(result)

def plot(run_dir: Annotated[Path, typer.Argument(help="A run directory (finished, running or interrupted).")]) -> None:
    """Write RUN_DIR/plots/metrics.png (test accuracy or mse, and loss, per round; epsilon spent on DP runs,
    the unlearning requests marked)."""
    from fedsim.plots import plot_run
    from fedsim.results import load_run

    print_line(str(plot_run(load_run(run_dir, unfinished=True))))

def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (finished, running or interrupted).")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page (plots embedded, works offline): scenario, curves, partitions, privacy ledger,
    unlearning table, faults and runtime of each run, and a comparison when there are several."""
    from fedsim.report import write_report

    print_line(f"report: {write_report(run_dirs, out)}")
