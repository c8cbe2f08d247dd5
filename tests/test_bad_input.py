"""Every kind of bad input: one line `error: <where>: <what>; <fix>`, exit code 2, no run dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """
[run]
name = "bad"
rounds = 2
[data]
dataset = "digits"
[data.partitioner]
name = "iid"
num_partitions = 4
[model]
name = "mlp"
[strategy]
name = "fedavg"
"""

CASES = {
    "toml-syntax": (GOOD.replace('rounds = 2', 'rounds = = 2'), [], r"TOML syntax error.*line 4"),
    "unknown-key": (GOOD.replace("rounds = 2", "rounds = 2\nrouns = 3"), [],
                    r"run\.rouns: unknown key 'rouns'; did you mean 'rounds'"),
    "unknown-section": (GOOD + "\n[clinet]\nlr = 0.1\n", [], r"unknown key 'clinet'; did you mean 'client'"),
    "wrong-type": (GOOD.replace("rounds = 2", 'rounds = "many"'), [], r"run\.rounds: input should be a valid integer"),
    "alpha-zero": (GOOD, ["data.partitioner.name=dirichlet", "data.partitioner.alpha=0"],
                   r"--set data\.partitioner\.alpha: input should be greater than 0"),
    "key-of-another-partitioner": (GOOD, ["data.partitioner.alpha=0.3"],
                                   r"--set data\.partitioner\.alpha: unknown key 'alpha' for partitioner 'iid'"),
    "privacy-key-of-another-mode": (GOOD + '[privacy]\nmode = "client-dp"\nq = 0.5\nnoise_multiplier = 1.0\n'
                                    'max_grad_norm = 2.0\n', [],
                                    (r"privacy\.max_grad_norm: unknown key 'max_grad_norm' for privacy mode "
                                    r"'client-dp'; choose from: accountant, clipping_norm")),
    "unknown-privacy-mode": (GOOD + '[privacy]\nmode = "dpsgd"\nnoise_multiplier = 1.0\n', [],
                             r"privacy\.mode: unknown privacy mode 'dpsgd'; did you mean 'dp-sgd'"),
    "fraction-above-one": (GOOD, ["strategy.fraction_train=1.5"],
                           r"strategy\.fraction_train: input should be less than or equal to 1"),
    "fraction-zero": (GOOD, ["strategy.fraction_train=0"], r"strategy\.fraction_train: input should be greater than 0"),
    "rounds-zero": (GOOD.replace("rounds = 2", "rounds = 0"), [],
                    r"run\.rounds: input should be greater than or equal to 1"),
    "too-many-partitions": (GOOD, ["data.partitioner.num_partitions=5000"],
                            r"5000 partitions but only 1437 training examples; use at most 1437"),
    "unknown-dataset": (GOOD.replace('"digits"', '"digitz"'), [], r"unknown dataset 'digitz'; did you mean 'digits'"),
    "unknown-model": (GOOD.replace('"mlp"', '"mpl"'), [], r"unknown model 'mpl'; did you mean 'mlp'"),
    "unknown-strategy": (GOOD.replace('"fedavg"', '"fedadm"'), [],
                         r"unknown strategy 'fedadm'; did you mean 'fedadam'"),
    "unknown-partitioner": (GOOD.replace('"iid"', '"dirichlet2"'), [],
                            r"unknown partitioner 'dirichlet2'; did you mean 'dirichlet'"),
    "regression-label-skew": (GOOD.replace('"digits"', '"diabetes"'), ["data.partitioner.name=dirichlet"],
                              r"needs class labels"),
    "cnn-on-tabular": (GOOD.replace('"digits"', '"wine"').replace('"mlp"', '"cnn"'), [], r"'cnn' needs image inputs"),
    "bad-set-syntax": (GOOD, ["runrounds"], r"expected KEY=VALUE"),
    "dp-epsilon-zero": (GOOD + '[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 0\n', [],
                        r"privacy\.target_epsilon: input should be greater than 0"),
    "dp-delta-one": (GOOD + '[privacy]\nmode = "dp-sgd"\nnoise_multiplier = 1.0\ndelta = 1.0\n', [],
                     r"privacy\.delta: input should be less than 1"),
    "dp-noise-zero": (GOOD + '[privacy]\nmode = "dp-sgd"\nnoise_multiplier = 0.0\n', [],
                      r"privacy\.noise_multiplier: input should be greater than 0"),
    "dp-q-above-one": (GOOD + '[privacy]\nmode = "client-dp"\nnoise_multiplier = 1.0\nq = 1.5\n', [],
                       r"privacy\.q: input should be less than or equal to 1"),
    "dp-no-noise": (GOOD + '[privacy]\nmode = "dp-sgd"\n', [], r"privacy needs noise_multiplier or target_epsilon"),
    "strategy-kwarg-type": (GOOD.replace('"fedavg"', '"fedadam"'), ['strategy.eta="fast"'],
                            (r"strategy: eta = 'fast': input should be a valid number \('fedadam' takes a float\); "
                             r"write a float, e\.g\. 0\.1")),
    "strategy-negative-step": (GOOD.replace('"fedavg"', '"fedadam"'), ["strategy.eta=-1"],
                               r"strategy: eta = -1: must be greater than 0"),
    "strategy-decay-one": (GOOD.replace('"fedavg"', '"fedyogi"'), ["strategy.beta_1=1.0"],
                           r"strategy: beta_1 = 1\.0: must be in \[0, 1\)"),
    "strategy-negative-mu": (GOOD.replace('"fedavg"', '"fedprox"'), ["strategy.proximal_mu=-0.1"],
                             r"strategy: proximal_mu = -0\.1: must not be negative"),
    "hidden-width-zero": (GOOD, ["model.hidden=[0]"], r"model\.hidden\.0: input should be greater than or equal to 1"),
    "dp-target-unreachable": (GOOD + '[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 0.0001\n', [],
                              r"privacy\.target_epsilon: 0\.0001 cannot be met by a client of \d+ examples"),
    "bag-larger-than-a-client": (GOOD + "[bags]\nk = 500\n", [],
                                 r"bags\.k: bags of 500 but client \d holds \d+ examples; use bags\.k <= \d+"),
    "dp-unsupported-layer": (GOOD.replace('"mlp"', '"cnn"\nbatch_norm = true') +
                             '[privacy]\nmode = "dp-sgd"\nnoise_multiplier = 1.0\n', [],
                             r"model: DP-SGD cannot train layer 'features\.1' \(BatchNorm2d\)"),
    # settings that would run, meaning nothing
    "rounds-a-boolean": (GOOD.replace("rounds = 2", "rounds = true"), [],
                         r"run\.rounds: a number is needed, not the boolean true"),
    "lr-a-boolean-by-set": (GOOD, ["client.lr=true"], r"--set client\.lr: a number is needed, not the boolean true"),
    "fraction-a-boolean": (GOOD, ["strategy.fraction_train=true"],
                           r"--set strategy\.fraction_train: a number is needed"),
    "negative-seed": (GOOD, ["run.seed=-1"], r"--set run\.seed: input should be greater than or equal to 0"),
    "seed-beyond-32-bits": (GOOD, [f"run.seed={2**64}"],
                            r"--set run\.seed: input should be less than or equal to 4294967295"),
    "empty-file": ("", [], r"empty scenario"),
    "krum-more-malicious-than-it-tolerates": (GOOD.replace('"fedavg"', '"krum"\nnum_malicious_nodes = 10'), [],
                                              r"num_malicious_nodes = 10: Krum tolerates .* trains 4; use at most 0"),
    "a-client-forgotten-twice": (GOOD.replace("rounds = 2", "rounds = 4") + "[unlearning]\n" + "".join(
        f'[[unlearning.requests]]\nat_round = {r}\nkind = "client"\ntarget = 1\nmethod = ["retrain"]\n'
        for r in (1, 2)), [], r"unlearning\.requests\.1: client 1 is already forgotten by request 0"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_scenario(case, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, overrides, pattern = CASES[case]
    path = tmp_path / "s.toml"
    path.write_text(text)
    sets = [arg for o in overrides for arg in ("--set", o)]
    code, out, err = cli("run", str(path), *sets, "--out", str(tmp_path / "run"))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert ";" in lines[0]  # a fix is always offered
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_missing_file(cli, tmp_path):
    code, _, err = cli("run", str(tmp_path / "nope.toml"))
    assert code == 2 and err.startswith("error: ") and "no such file or shipped scenario" in err


def test_missing_data_file(cli, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace('"digits"', f'"file:{tmp_path}/absent.csv"'))
    code, _, err = cli("validate", str(path))
    assert code == 2 and "file not found" in err


def test_not_a_run_dir(cli, tmp_path):
    code, _, err = cli("show", str(tmp_path))
    assert code == 2 and "not a finished run dir" in err


def test_real_entry_point_exit_code(tmp_path):
    """The installed console script itself: one line on stderr, exit 2."""
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace("rounds = 2", "rounds = 0"))
    fedsim = Path(sys.executable).with_name("fedsim")
    proc = subprocess.run([str(fedsim), "validate", str(path)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


def test_every_scenario_error_is_reported_one_line_each(cli, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace("rounds = 2", "rounds = 0") + '[faults]\ndropout_rate = 2.0\nstraggler_rat = 0.1\n')
    code, _, err = cli("validate", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 3 and all(line.startswith("error: ") and ";" in line for line in lines), err
    assert "run.rounds: input should be greater than or equal to 1" in lines[0]
    assert "faults.dropout_rate" in err and "unknown key 'straggler_rat'; did you mean 'straggler_rate'" in err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_wrong_ray_address_ends_in_one_line_within_the_connect_timeout(cli, tmp_path):
    import time

    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace('rounds = 2', 'rounds = 2\nruntime = "ray"\nray_connect_timeout_s = 1.5'))
    start = time.monotonic()
    code, _, err = cli("run", str(path), "--ray-address", f"127.0.0.1:{_closed_port()}", "--out", str(tmp_path / "run"))
    elapsed = time.monotonic() - start
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "cannot attach to Ray at '127.0.0.1:" in lines[0] and "nothing answered within 1.5 s" in lines[0]
    assert 1.0 < elapsed < 30  # waited for the address (retrying), then gave up; Ray alone retries ~12 min
    assert not (tmp_path / "run").exists()


def test_reachable_accepts_a_listening_address_and_leaves_auto_to_ray():
    import socket

    from fedsim.errors import FedsimError
    from fedsim.runtime.ray_cluster import reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        reachable(f"127.0.0.1:{server.getsockname()[1]}", 1.0)
    reachable("auto", 0.1)
    with pytest.raises(FedsimError, match="nothing answered within 0.2 s"):
        reachable(f"127.0.0.1:{_closed_port()}", 0.2)


@pytest.mark.parametrize(("text", "pattern"), [
    ("a,b,label\n1,2,0\n5,x,1\n", r"column 'b' row 2 holds 'x', not a number; make every feature column numeric"),
    ("a,b,label\n1,foo,0\n3,bar,1\n", r"column 'b' row 1 holds 'foo', not a number"),
    ("a,b,label\n1,2,0\n3,4\n5,6,1\n", r"column 'label' row 2 is empty \(1 row in all\); fill or drop"),
    ("a,b,label\n1,2,0\n3,inf,1\n", r"column 'b' row 2 is not a finite float32 number \(1 row in all\); replace"),
    ("a,b,label\n1e400,2,0\n3,4,1\n1e39,1,0\n", r"column 'a' row 1 is not a finite float32 number \(2 rows in all\)"),
])
def test_bad_csv_names_the_file_column_row_and_value(cli, tmp_path, text, pattern):
    import re

    data = tmp_path / "d.csv"
    data.write_text(text)
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace('"digits"', f'"file:{data}"').replace("num_partitions = 4", "num_partitions = 1"))
    code, _, err = cli("validate", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"data.dataset: file:{data}" in lines[0], err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("make", ["file", "under-a-file"])
def test_an_out_that_cannot_be_a_run_dir(cli, tmp_path, make):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    out = target if make == "file" else target / "run"
    path = tmp_path / "s.toml"
    path.write_text(GOOD)
    code, _, err = cli("run", str(path), "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert ("is a file, not a directory" if make == "file" else "cannot be written: Not a directory") in lines[0]
    assert target.read_text() == "not a directory"


def test_compare_refuses_a_missing_x_field_and_mixed_tasks(cli, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace("rounds = 2", "rounds = 1"))
    cli("run", str(path), "--out", str(tmp_path / "a"))
    code, _, err = cli("compare", str(tmp_path / "a"), "--x", "bags.rho", "--png", str(tmp_path / "c.png"))
    assert code == 2 and err.count("\n") == 1 and "--x: 'bags.rho' is not a number in every run (not in: bad)" in err
    cli("run", str(path), "--set", 'data.dataset="diabetes"', "--out", str(tmp_path / "b"))
    code, _, err = cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--png", str(tmp_path / "c.png"))
    assert code == 2 and err.count("\n") == 1 and "mixes classification runs" in err and "regression runs" in err


def test_validate_catches_what_round_one_would(cli, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD + "[bags]\nk = 500\n")
    code, out, err = cli("validate", str(path))
    assert code == 2 and not out and "bags.k: bags of 500" in err


def test_bag_size_with_no_finite_risk_is_refused(cli):
    code, _, err = cli("privacy", "bag-size", "--n", "50", "--d", "100", "--rho", "1")
    assert code == 2 and err.count("\n") == 1 and "no bag size gives a finite risk" in err


@pytest.mark.parametrize(("setting", "expected"), [
    ("client.lr=inf", "client.lr: input should be a finite number (got inf)"),
    ("client.lr=-inf", "client.lr: input should be a finite number (got -inf)"),
    ("client.momentum=nan", "client.momentum: input should be a finite number (got nan)"),
    ("client.lr=1e400", "client.lr: input should be a finite number (got inf)"),
    ("strategy.eta=inf", "strategy: eta = inf: must be a finite number; use e.g. 0.1"),
])
def test_a_setting_that_is_not_a_finite_number_is_refused(setting, expected, cli):
    extra = ["--set", "strategy.name=fedadam"] if setting.startswith("strategy.") else []
    code, _, err = cli("validate", "quickstart", *extra, "--set", setting)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_compare_refuses_a_target_outside_the_metrics_range(cli, tmp_path, small_scenario):
    import fedsim

    fedsim.run(small_scenario(run__rounds=1), out=tmp_path / "run")
    for target in ("2.0", "-0.5"):
        code, _, err = cli("compare", str(tmp_path / "run"), "--target", target)
        assert code == 2 and err.startswith("error: --target: ") and "outside the range of accuracy" in err, err
    assert cli("compare", str(tmp_path / "run"), "--target", "0.5", "--png", str(tmp_path / "c.png"))[0] == 0


def test_a_run_that_trains_nothing_exits_1_and_skipped_rounds_are_counted(cli, tmp_path):
    import json

    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace("rounds = 2", "rounds = 3") + "[faults]\ndropout_rate = 1.0\n")
    code, out, err = cli("run", str(path), "--out", str(tmp_path / "none"))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "no round aggregated anything: in each of the 3 rounds" in lines[0] and "initial one" in lines[0]
    assert json.loads((tmp_path / "none" / "summary.json").read_text())["skipped_rounds"] == 3
    # some rounds skipped: the final line says how many, summary.json too
    path.write_text(GOOD.replace("rounds = 2", "rounds = 6").replace('name = "fedavg"', 'name = "fedavg"\n'
                    'min_train_nodes = 3') + "[faults]\ndropout_rate = 0.3\n")
    code, out, err = cli("run", str(path), "--out", str(tmp_path / "some"))
    rows = [json.loads(line) for line in (tmp_path / "some" / "metrics.jsonl").read_text().splitlines()]
    skipped = sum(1 for r in rows if r.get("skipped"))
    assert code == 0 and 0 < skipped < 6, (skipped, err)
    final = next(line for line in out.splitlines() if line.startswith("final: "))
    assert f"| {skipped} of 6 rounds skipped (too few clients answered) |" in final
    assert json.loads((tmp_path / "some" / "summary.json").read_text())["skipped_rounds"] == skipped


@pytest.mark.parametrize("rows, extra, expected", [
    ("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(60)), 'feature_columns = ["a", "label"]\n',
     r"data\.feature_columns: holds the label column 'label' \(the model would read the answer\); remove 'label'"),
    ("a,b,label\n" + "".join(f"{i},{i % 3},1\n" for i in range(60)), "",
     r"data\.label_column: 'label' has one class \(1\) in all 60 rows"),
    ("a,b,label\n1,2,0\n3,4,1\n5,6,0\n", "",
     (r"data\.test_fraction: 3 rows x test_fraction 0\.2 leave a test set of 1 example\(s\); central evaluation "
     r"needs at least 5; use more data")),
    ("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)), "",
     r"test set of 4 example\(s\).*use more data or data\.test_fraction >= 0\.25"),
])
def test_degenerate_data_is_refused_with_its_numbers(rows, extra, expected, cli, tmp_path):
    import re

    data = tmp_path / "d.csv"
    data.write_text(rows)
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace('dataset = "digits"', f'dataset = "file:{data}"\n{extra}').replace(
        "num_partitions = 4", "num_partitions = 2"))
    code, _, err = cli("validate", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(expected, err), err
