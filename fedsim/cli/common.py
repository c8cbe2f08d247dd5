"""What every `fedsim` command shares: the Typer app, the two consoles, the scenario argument and --set."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated-learning and privacy simulation on Flower.")

out_console = Console()

err_console = Console(stderr=True)

ScenarioArg = Annotated[str, typer.Argument(help="Scenario file, or the name of a shipped scenario (fedsim list).")]

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s",
                                                  help="Override a field: --set data.partitioner.alpha=0.1")]
