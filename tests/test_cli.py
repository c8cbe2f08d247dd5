"""The CLI commands a user types."""

from __future__ import annotations

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
    code, out, _ = cli("show", str(run_dir))
    assert code == 0 and out.count("│") > 10 and "best:" in out
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

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(client_module, "train_locally", interrupt)
    code, _, err = cli("run", "quickstart", "--out", str(tmp_path / "run"))
    assert code == 130 and "interrupted" in err and not (tmp_path / "run").exists()
