"""How the commands print: the per-round metrics table, plain tables, result lines, the unlearning table."""

from __future__ import annotations

from rich.table import Table

from fedsim.cli.common import out_console

SHORT = {"accuracy": "acc"}

def fmt(value: object) -> str:
    if value is None:  # a run dir's null: a number the run produced that was not finite
        from fedsim.results import NOT_FINITE

        return NOT_FINITE
    return f"{value:.4f}" if isinstance(value, float) else str(value)

def metric_table(rows: list[dict], title: str, max_rows: int | None = None) -> Table:
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
        privacy = [fmt(r.get("privacy", {}).get("epsilon", ""))] if private else []
        table.add_row(str(r["round"]), *(fmt(r["train"].get(k, "")) for k in train_keys),
                      *(fmt(r["eval"].get(k, "")) for k in eval_keys), *privacy,
                      str(r.get("replies", "")), str(r.get("failures", "")), f"{r['time_s']:.2f}")
    return table

KEY_COLUMNS = ("setting", "request", "method")  # what a row is


def table_width(header: list[str], rows: list[list[str]]) -> int:
    """The characters a rich table needs to show every cell whole ("| " + cell + " " per column, and "|")."""
    return sum(max(len(str(t)) for t in [col, *(row[i] for row in rows)]) + 3 for i, col in enumerate(header)) + 1


def record_lines(header: list[str], rows: list[list[str]], width: int) -> list[str]:
    """A table too wide for the terminal as one block per row: its key columns, then `name value` pairs wrapped
    between pairs (never through a number)."""
    keys = [i for i, col in enumerate(header) if col in KEY_COLUMNS]
    lines = []
    for row in rows:
        lines.append(", ".join(row[i] for i in keys))
        line = ""
        for pair in (f"{header[i]} {row[i]}" for i in range(len(header)) if i not in keys):
            if line and len(line) + 3 + len(pair) > width:
                lines.append(line)
                line = ""
            line = f"{line} | {pair}" if line else f"  {pair}"
        lines.append(line)
    return lines


def print_table(header: list[str], rows: list[list[str]], title: str, markdown: bool = False) -> None:
    """A rich table; where the terminal is too narrow for every cell whole, one block per row (record_lines);
    or Markdown printed as plain text (never wrapped, a blank line after it)."""
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        return
    if table_width(header, rows) > out_console.width:
        for line in [f"{title}:", *record_lines(header, rows, out_console.width)]:
            print_line(line)
        return
    table = Table(title=title)
    for col in header:
        table.add_column(col, justify="left" if col in KEY_COLUMNS else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)

def metrics_text(values: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in (values or {}).items()) or "n/a"

def print_unlearning(result) -> None:
    """The run's unlearning table (one row per method of each request), if it served any."""
    from fedsim.compare import Group, unlearning_rows

    header, rows = unlearning_rows([Group(result.scenario.run.name, [result])])
    if not rows:
        return
    history = result.summary.get("history", {})
    requests = sorted({r[1] for r in rows})
    keep = [2, *range(4, len(header))] if len(requests) == 1 else [1, 2, *range(4, len(header))]
    print_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows],
                 f"unlearning {', '.join(requests)} (history store: {history.get('rounds', 0)} rounds, "
                 f"{history.get('bytes', 0) / 1e6:.1f} MB)")

def print_line(text: str) -> None:
    """A result line, never wrapped or marked up (so `| tail -1` keeps the numbers when piped)."""
    out_console.print(text, markup=False, highlight=False, soft_wrap=True)
