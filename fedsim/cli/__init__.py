"""The `fedsim` command: run, list, validate, partition, example-data, show, plot, report, sweep, compare,
privacy; one module per command group (fedsim.cli.running, scenarios, runs, experiments, privacy), sharing
fedsim.cli.common (the app, consoles, options) and fedsim.cli.render (tables and result lines).

Errors a user can cause print one line `error: <where>: <what>; <fix>` on stderr and exit with code 2.
"""

from __future__ import annotations

import sys

from fedsim.cli import experiments, privacy, running, runs, scenarios
from fedsim.cli.common import app, err_console
from fedsim.errors import FedsimError

# the commands, in the order `fedsim --help` lists them
app.command()(running.run)
app.command(name="list")(scenarios.list_scenarios)
app.command()(scenarios.validate)
app.command()(runs.show)
app.command()(runs.plot)
app.command()(scenarios.partition)
app.command(name="example-data")(scenarios.example_data)
app.command()(experiments.sweep)
app.command()(experiments.compare)
app.command()(runs.report)
app.add_typer(privacy.privacy_app, name="privacy")


def main() -> None:
    try:
        app()
    except FedsimError as exc:
        if getattr(exc, "run_dir", None) is not None:  # a run that can be resumed (e.g. after a failed write)
            exc.fix = exc.fix.replace("RUN_DIR", str(exc.run_dir))
        for line in exc.lines():
            err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # (typer turns one raised inside a command into exit 130 itself)
        err_console.print("interrupted", markup=False, highlight=False)
        sys.exit(130)
