"""`fedsim report`: one self-contained HTML page for one or several run dirs (plots embedded as data: URIs; no
scripts, styles or fonts from anywhere else, so it opens offline and can be mailed as one file)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fedsim.compare import Group, groups_figure, load_groups, summary_rows, unlearning_rows
from fedsim.results import NOT_FINITE, RunResult, load_run

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; }
"""


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; cells that read as numbers are right-aligned."""
    def cell(value: Any) -> str:
        text = str(value)
        try:
            float(text.split(" ± ")[0])
            return f'<td class="n">{html.escape(text)}</td>'
        except ValueError:
            return f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pairs(values: dict[str, Any]) -> str:
    return table(["", "value"], [[k, v] for k, v in values.items() if not isinstance(v, dict | list)])


def _image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def run_section(result: RunResult, partitions: bool = True) -> str:
    """The scenario, curves, partition heatmap, privacy ledger, unlearning table, faults and runtime of one run."""
    from fedsim.plots import png_data_uri, run_figure

    s = result.summary
    where = html.escape(str(result.run_dir))
    parts = [f"<h2>{html.escape(result.scenario.run.name)} <span class='note'>({where})</span></h2>"]
    if s.get("unfinished"):
        parts.append(f"<p class='note'>unfinished: {s['rounds']} of {result.scenario.run.rounds} rounds so far</p>")
    final = {f"final {k}": f"{v:.4f}" if v is not None else NOT_FINITE for k, v in (s.get("final") or {}).items()}
    best = s.get("best") or {}
    final.update({f"best {k}": (f"{v:.4f}" if k != "round" else v) for k, v in best.items()})
    final.update({"rounds": s.get("rounds"), "wall time s": s.get("wall_time_s"), "failed replies": s.get("failures")})
    parts.append(_pairs(final))
    if result.metrics:
        parts.append("<h3>metrics per round</h3>" + _image(png_data_uri(run_figure(result)), "metrics per round"))
    if partitions:
        from fedsim.data import federated_data
        from fedsim.plots import partitions_figure

        data = federated_data(result.scenario.data, result.scenario.run.seed)
        parts.append("<h3>partitions</h3>" + _image(png_data_uri(partitions_figure(
            data, f"{result.scenario.run.name}: examples per client and class")), "partitions"))
    for key, title in (("privacy", "privacy ledger"), ("label_privacy", "label privacy ledger")):
        if key in s:
            ledger = dict(s[key])
            parts.append(f"<h3>{title}</h3>" + _pairs(ledger))
            if ledger.get("uncovered"):
                parts.append(f"<p class='note'>released but not covered by epsilon: "
                             f"{html.escape(', '.join(map(str, ledger['uncovered'])))}</p>")
    header, rows = unlearning_rows([Group(result.scenario.run.name, [result])])
    if rows:
        parts.append("<h3>unlearning</h3>" + table(header[2:], [r[2:] for r in rows]))
    faults = [[r["round"], r.get("failures", 0), r.get("first_error", "")] for r in result.metrics if r.get("failures")]
    if faults:
        parts.append("<h3>faults</h3>" + table(["round", "failed replies", "first error"], faults))
    if s.get("runtime"):
        parts.append("<h3>runtime</h3>" + _pairs(s["runtime"]))
    parts.append("<h3>scenario</h3><pre>" + html.escape(result.scenario.to_toml()) + "</pre>")
    return "\n".join(parts)


def comparison_section(groups: list[Group]) -> str:
    from fedsim.plots import png_data_uri

    header, rows = summary_rows(groups, None)
    parts = ["<h2>comparison</h2>", table(header, rows), _image(png_data_uri(groups_figure(groups)), "comparison")]
    header, rows = unlearning_rows(groups)
    if rows:
        parts.append("<h3>unlearning (mean ± std over seeds)</h3>" + table(header, rows))
    return "\n".join(parts)


def render(run_dirs: list[Path]) -> str:
    """The whole page for these run dirs (finished, running or interrupted)."""
    results = [load_run(d, unfinished=True) for d in run_dirs]
    title = results[0].scenario.run.name if len(results) == 1 else f"{len(results)} runs"
    body = []
    finished = [r.run_dir for r in results if not r.summary.get("unfinished")]
    if len(finished) > 1:
        body.append(comparison_section(load_groups(finished)))
    body += [run_section(r, partitions=i == 0 or len(results) <= 4) for i, r in enumerate(results)]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fedsim: {html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>fedsim report: {html.escape(title)}</h1>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dirs: list[Path], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(run_dirs), encoding="utf-8")
    return out
