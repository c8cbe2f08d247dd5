"""`fedsim list`, `validate` and `partition`: the shipped scenarios, a check without running, the clients' data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedsim.cli.common import ScenarioArg, SetOpt, out_console
from fedsim.cli.render import print_line
from fedsim.scenario import Scenario, describe, parse_overrides, shipped_scenarios


def list_scenarios() -> None:
    """List the shipped scenarios."""
    table = Table(title="shipped scenarios (fedsim run NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, path in shipped_scenarios().items():
        table.add_row(name, describe(path))
    out_console.print(table)

def example_data(
    name: Annotated[str, typer.Argument(help="retina | cifar10 | faces | femnist | shakespeare")],
    out: Annotated[Path | None, typer.Option(help="Folder (default: the layout's own, e.g. data/Retina).")] = None,
) -> None:
    """Write generated data in the layout a shipped set-up reads (FedLD's Retina, CIFAR-10, faces, FEMNIST,
    Shakespeare), so it runs here; the real data goes in the same place."""
    from fedsim.errors import FedsimError, suggest
    from fedsim.example_data import LAYOUTS, write

    if name not in LAYOUTS:
        raise FedsimError("fedsim example-data", f"no layout '{name}'", suggest(name, LAYOUTS))
    folder = write(name, out)
    print_line(f"wrote {folder}: {LAYOUTS[name][1]}")


def validate(scenario: ScenarioArg, set_: SetOpt = None) -> None:
    """Check a scenario (schema, data, model, strategy) without running it."""
    sc = Scenario.load(scenario, list(set_ or []))  # a bad field is answered before torch and Flower load
    from fedsim.server import prepare

    prepared = prepare(sc)
    parameters = sum(p.numel() for p in prepared.model.parameters())
    out_console.print(
        f"ok: {scenario}: {sc.data.dataset} ({prepared.data.info.task}), {prepared.data.num_partitions} clients "
        f"({sc.data.partitioner.name}), {sc.model.name or sc.model.factory} ({parameters:,} parameters, inputs "
        f"{prepared.data.info.input_shape}), {sc.strategy.name}, {sc.run.rounds} rounds", markup=False,
        highlight=False, soft_wrap=True)
    if prepared.one_by_one_because:
        out_console.print(f"clients train one by one: {prepared.one_by_one_because}", markup=False,
                          highlight=False, soft_wrap=True)
    for r in sc.unlearning.requests if sc.unlearning else []:
        out_console.print(f"unlearning: {r.kind} {r.target} after round {r.at_round}: {', '.join(r.method)}",
                          markup=False, highlight=False, soft_wrap=True)

TABLE_MAX_CLIENTS = 40  # `fedsim partition` lists the first and last 20 clients beyond this

def partition(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    png: Annotated[Path | None,
                   typer.Option(help="Heatmap path (default: <output.dir>/<name>-partitions.png).")] = None,
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
            table.add_row("...", f"{len(counts) - TABLE_MAX_CLIENTS} more",
                          *([""] * (counts.shape[1] if classification else 0)))
        table.add_row(str(i), str(int(row.sum())), *([str(int(v)) for v in row] if classification else []))
    out_console.print(table)
    changed = ", ".join(f"{k}={v}" for k, v in parse_overrides(set_).items())
    title = f"{sc.run.name}: examples per client and class" + (f" ({changed})" if changed else "")
    path = png or Path(sc.output.dir) / f"{sc.run.name}-partitions.png"
    what = "summary" if data.num_partitions > HEATMAP_MAX_CLIENTS else "heatmap"
    print_line(f"{what}: {plot_partitions(data, path, title)}")
