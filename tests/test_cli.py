"""The CLI commands a user types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_list(cli):
    code, out, _ = cli("list")
    assert code == 0 and "quickstart" in out and "Dirichlet" in out


def test_validate(cli):
    code, out, _ = cli("validate", "quickstart", "--set", "data.partitioner.alpha=0.1")
    assert code == 0 and out.startswith("ok: quickstart: digits (classification), 20 clients (dirichlet)")


def test_run_show_plot(cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, _ = cli("run", "quickstart", "--set", "run.rounds=3", "--set", "data.partitioner.num_partitions=5",
                       "--out", str(run_dir))
    assert code == 0 and "final: loss" in out and "test acc" in out
    final = next(line for line in out.splitlines() if line.startswith("final: "))
    assert f"run dir: {run_dir}" in final  # one line however long, so `| tail -1` keeps the numbers
    code, out, _ = cli("show", str(run_dir))
    assert code == 0 and out.count("│") > 10 and "best: round " in out and "{" not in out  # no raw dicts
    code, out, _ = cli("plot", str(run_dir))
    png = Path(out.strip())
    assert code == 0 and png == run_dir / "plots" / "metrics.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_quiet_run_prints_the_run_dir(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("run", "quickstart", "--set", "run.rounds=1", "-q")
    run_dir = Path(out.strip())
    assert code == 0 and run_dir.parent == Path("runs") and run_dir.name.startswith("quickstart-")
    assert (tmp_path / run_dir / "summary.json").is_file()


def test_partition_table_and_heatmap(cli, tmp_path):
    png = tmp_path / "p.png"
    code, out, _ = cli("partition", "quickstart", "--png", str(png))
    assert code == 0 and "examples per" in out and out.count("\n") > 20 and png.read_bytes()[:4] == b"\x89PNG"
    code, out, _ = cli("partition", "diabetes-regression", "--png", str(tmp_path / "r.png"))
    assert code == 0 and (tmp_path / "r.png").is_file()


def test_flower_runtime_points_to_flwr_run(cli, tmp_path):
    code, _, err = cli("run", "quickstart", "--runtime", "flower", "--out", str(tmp_path / "x"))
    assert code == 2 and "run.runtime: 'flower' runs through Flower's own CLI" in err and not (tmp_path / "x").exists()


def test_ctrl_c_exits_130_without_a_run_dir(cli, tmp_path, monkeypatch):
    from fedsim.clients import app as client_module
    from fedsim.clients import train_together as handler

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(client_module, "train_locally", interrupt)
    monkeypatch.setattr(handler, "train_stacked", interrupt)  # not turned into a one-by-one rerun
    code, _, err = cli("run", "quickstart", "--out", str(tmp_path / "run"))
    assert code == 130 and "interrupted" in err and not (tmp_path / "run").exists()


def test_show_and_plot_look_at_an_unfinished_run(cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", "quickstart", "--set", "run.rounds=3", "--set", "data.partitioner.num_partitions=5",
        "--out", str(run_dir))
    (run_dir / "summary.json").unlink()  # as while it runs, or after a kill -9
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # a torn last line
    code, out, _ = cli("show", str(run_dir))
    assert code == 0 and "unfinished: 2 of 3 rounds so far" in out and "final: loss" in out
    code, out, _ = cli("plot", str(run_dir))
    assert code == 0 and Path(out.strip()).read_bytes()[:4] == b"\x89PNG"


def test_run_of_an_unlearning_scenario_prints_its_unlearning_table(cli, tmp_path):
    code, out, _ = cli("run", "unlearn-client", "--set", "run.rounds=3", "--set", "unlearning.requests.0.at_round=2",
                       "--set", 'unlearning.requests.0.method=["retrain", "finetune"]', "--out", str(tmp_path / "run"))
    assert code == 0 and "unlearning client 3 @ 2" in out and "finetune" in out and "UA" in out


def test_plot_marks_unlearning_requests_and_draws_the_epsilon_spent(tmp_path, monkeypatch):
    import fedsim
    from fedsim import plots
    from fedsim.scenario import Scenario

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.append(fig) or out)
    dp = fedsim.run(Scenario.load("client-dp", ["run.rounds=2"]), out=tmp_path / "dp")
    plots.plot_run(dp)
    main = figures[-1].axes[0]
    assert "final epsilon" in main.get_title() and any(ax.get_ylabel() == "epsilon spent" for ax in figures[-1].axes)
    unlearn = fedsim.run(Scenario.load("unlearn-client", ["run.rounds=3", "unlearning.requests.0.at_round=2",
                                                          'unlearning.requests.0.method=["finetune"]',
                                                          "unlearning.evaluate=false"]), out=tmp_path / "ul")
    plots.plot_run(unlearn)
    marks = [line for line in figures[-1].axes[0].get_lines() if line.get_label() == "unlearning client 3"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 2.5


def _captured_figures(monkeypatch) -> list:
    from fedsim import plots

    figures = []
    original = plots.save_figure

    def keep(fig, out, *args, **kwargs):
        figures.append(fig)
        return original(fig, out, *args, **kwargs)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def test_partition_plot_title_names_the_overrides(cli, tmp_path, monkeypatch):
    figures = _captured_figures(monkeypatch)
    code, out, _ = cli("partition", "quickstart", "--set", "data.partitioner.alpha=0.1", "--png",
                       str(tmp_path / "p.png"))
    assert code == 0 and f"heatmap: {tmp_path / 'p.png'}" in out
    titles = [ax.get_title() for ax in figures[-1].axes] + [figures[-1]._suptitle.get_text() if figures[-1]._suptitle
                                                           else ""]
    assert any("data.partitioner.alpha=0.1" in t for t in titles), titles


def test_many_clients_get_a_summary_not_a_heatmap(cli, tmp_path, monkeypatch):
    figures = _captured_figures(monkeypatch)
    code, out, _ = cli("partition", "quickstart", "--set", 'data.partitioner={name="iid", num_partitions=300}',
                       "--png", str(tmp_path / "p.png"))
    assert code == 0 and f"summary: {tmp_path / 'p.png'}" in out and "260 more" in out
    assert [ax.get_xlabel() for ax in figures[-1].axes] == [
        "examples per client", "largest class's share of a client's examples", "class"]
    assert "(300 clients)" in figures[-1]._suptitle.get_text()


def test_a_bad_scenario_is_answered_before_torch_or_flower_load():
    """`fedsim run quikstart` and a bad field (run, validate) answer from the schema alone (under 1 s: no torch, no
    Flower stack)."""
    probe = ("import sys\nfrom fedsim.cli import main\nsys.argv = ['fedsim', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as exc:\n"
             "    print(exc.code, sorted({'torch', 'ray', 'flwr_datasets', 'opacus'} & set(sys.modules)))\n")
    for args in (["run", "quikstart"], ["run", "quickstart", "--set", "client.lr=-1"],
                 ["validate", "quickstart", "--set", "client.lr=-1"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], check=False, capture_output=True, text=True,
                              timeout=60)
        assert done.stdout.split("\n")[-2] == "2 []", (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error: "), done.stderr


def test_tables_at_80_columns_never_cut_a_number(monkeypatch, capsys):
    import io

    from rich.console import Console

    from fedsim.cli import render

    header = ["setting", "request", "method", "seeds", "UA", "RA", "MIA", "Gap", "time s", "speed-up"]
    rows = [["fedld-noniid-alpha0.1-fedld", "client 3 @ 20", "gradient-ascent", "10", "14.55 ± 15.05",
             "93.90 ± 1.73", "33.75 ± 27.49", "8.89 ± 4.42", "0.004 ± 0.001", "226.7 ± 54.3"],
            ["fedld-noniid-alpha0.1-fedld", "client 3 @ 20", "retrain", "10", "20.91 ± 12.09", "94.75 ± 1.71",
             "54.20 ± 24.11", "0.00 ± 0.00", "0.942 ± 0.213", "1.0 ± 0.0"]]
    for width, wide in ((80, False), (200, True)):
        out = io.StringIO()
        monkeypatch.setattr(render, "out_console", Console(width=width, file=out))
        render.print_table(header, rows, "unlearning")
        text = out.getvalue()
        assert "…" not in text and all(len(line) <= width for line in text.splitlines())
        assert all(cell in text for row in rows for cell in row)  # every name and number whole
        assert ("┃" in text) == wide  # a table where it fits, a block per row where it does not
    render.print_table(header, rows, "unlearning", markdown=True)
    assert capsys.readouterr().out.endswith(" |\n\n")  # a blank line parts the table from what follows
