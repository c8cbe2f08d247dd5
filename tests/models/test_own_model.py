"""Your own model: a factory named in the scenario, weights from a file, an object given to fedsim.run."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

import fedsim
from fedsim.errors import ScenarioError
from fedsim.runner import resume
from fedsim.server import Interrupted, prepare

MODULE = """
import torch
from torch import nn


def tiny_cnn(input_shape, num_outputs, width=WIDTH):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(width * 4, num_outputs))


def not_a_model():
    return 3


def fixed_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def broken_forward():
    return nn.Linear(5, 10)
"""

SCENARIO = """
[run]
rounds = 2
seed = 3
[data]
dataset = "digits"
[data.partitioner]
num_partitions = 3
[model]
factory = "my_models:tiny_cnn"
[model.args]
width = 4
[client]
batch_size = 64
"""


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """A researcher's folder: my_models.py next to experiment.toml; the tests run from elsewhere."""
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "my_models.py").write_text(MODULE.replace("WIDTH", "8"))
    (folder / "experiment.toml").write_text(SCENARIO)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delitem(__import__("sys").modules, "my_models", raising=False)
    yield folder
    __import__("sys").modules.pop("my_models", None)


def test_a_factory_next_to_the_scenario_builds_and_trains(experiment, tmp_path):
    scenario = fedsim.Scenario.load(str(experiment / "experiment.toml"))
    assert scenario.model.factory_path == str(experiment.resolve())
    result = fedsim.run(scenario, out=tmp_path / "run")
    built = json.loads((tmp_path / "run" / "model.json").read_text())
    assert built == {"class": "torch.nn.modules.container.Sequential", "parameters": 4 * 9 + 4 + 16 * 10 + 10,
                     "given": False}  # width 4 from [model.args]; 1 channel and 10 classes from the data
    assert result.state_dict["0.weight"].shape == (4, 1, 3, 3) and len(result.metrics) == 2


@pytest.mark.parametrize(("override", "key", "message"), [
    ("model.factory=no_such_module:f", "model.factory", "cannot import 'no_such_module'"),
    ("model.factory=my_models:missing", "model.factory", "has no 'missing'"),
    ("model.factory=my_models", "model.factory", "is not 'module:callable'"),
    ("model.factory=my_models:not_a_model", "model.factory", "returned a int, not a torch nn.Module"),
    ("model.args.depth=3", "model.args", "unexpected keyword argument 'depth'"),
    ("model.factory=my_models:fixed_outputs", "model.factory", r"output is \(2, 3\).*expected \(2, 10\)"),
    ("model.factory=my_models:broken_forward", "model.factory", r"fails on a batch of shape \(2, 64\)"),
])
def test_a_bad_factory_is_one_line_naming_the_key(experiment, cli, override, key, message):
    extra = [] if override.startswith("model.args") else ["--set", "model.args={}"]
    code, _, err = cli("validate", str(experiment / "experiment.toml"), "--set", override, *extra)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {key}:") and __import__("re").search(message, line), line


def test_initial_weights_from_a_file_equal_a_given_module(experiment, tmp_path):
    """fedsim.run(model=module) starts from the module's weights; a factory + model.init of the same weights is the
    same run, bit for bit."""
    import sys

    sys.path.insert(0, str(experiment))
    try:
        import my_models
    finally:
        sys.path.remove(str(experiment))
    torch.manual_seed(11)
    module = my_models.tiny_cnn((1, 8, 8), 10, width=4)
    torch.save(module.state_dict(), experiment / "start.pt")
    scenario = fedsim.Scenario.load(str(experiment / "experiment.toml"), ["model.init=start.pt"])
    assert scenario.model.init == str((experiment / "start.pt").resolve())  # found next to the scenario
    from_file = fedsim.run(scenario, out=tmp_path / "file")
    given = fedsim.run(fedsim.Scenario.load(str(experiment / "experiment.toml")), out=tmp_path / "given",
                       model=module)
    assert all(torch.equal(from_file.state_dict[k], given.state_dict[k]) for k in from_file.state_dict)
    assert [r["eval"] for r in from_file.metrics] == [r["eval"] for r in given.metrics]
    assert torch.equal(module.state_dict()["0.weight"], torch.load(experiment / "start.pt")["0.weight"])  # untouched
    assert json.loads((tmp_path / "given" / "model.json").read_text())["given"] is True


@pytest.mark.parametrize(("state", "message"), [
    ({"0.weight": torch.zeros(4, 1, 3, 3)}, "missing 0.bias, 4.weight, 4.bias"),
    ("not weights", "holds a str, not a state_dict"),
    ({"0.weight": torch.zeros(4, 1, 5, 5), "0.bias": torch.zeros(4), "4.weight": torch.zeros(10, 16),
      "4.bias": torch.zeros(10), "extra": torch.zeros(1)}, r"unexpected extra, shape 0.weight \(4, 1, 5, 5\)"),
])
def test_initial_weights_that_do_not_fit_are_one_line(experiment, tmp_path, state, message):
    torch.save(state, tmp_path / "w.pt")
    scenario = fedsim.Scenario.load(str(experiment / "experiment.toml"), [f"model.init={tmp_path / 'w.pt'}"])
    with pytest.raises(ScenarioError, match=message) as info:
        prepare(scenario)
    assert str(info.value).startswith("model.init:")


def test_pickled_code_in_a_weights_file_does_not_run(experiment, tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran')",))

    torch.save({"0.weight": Payload()}, tmp_path / "evil.pt")
    scenario = fedsim.Scenario.load(str(experiment / "experiment.toml"), [f"model.init={tmp_path / 'evil.pt'}"])
    with pytest.raises(ScenarioError, match="cannot load .* as weights"):
        prepare(scenario)


class Net(nn.Module):
    """A model defined in the user's own code (here: this test module, not installed on Ray's workers)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


@pytest.mark.slow  # make test keeps one Ray run
def test_a_given_model_runs_on_ray_as_inline(small_scenario, tmp_path):
    """Net is defined here, in a module Ray's workers cannot import: it travels by value. Bit for bit with one reply
    per client: early reduction sums each actor's chunk apart, an order of additions inline does not share."""
    scenario = small_scenario(run__rounds=2, run__reduce_early=False)
    torch.manual_seed(5)
    module = Net()
    inline = fedsim.run(scenario, out=tmp_path / "inline", model=module)
    on_ray = fedsim.run(scenario.with_overrides({"run.runtime": "ray"}), out=tmp_path / "ray", model=module)
    assert all(torch.equal(inline.state_dict[k], on_ray.state_dict[k]) for k in inline.state_dict)


def test_a_given_callable_is_seeded(small_scenario, tmp_path):
    scenario = small_scenario(run__rounds=2)
    built = fedsim.run(scenario, out=tmp_path / "callable", model=Net)  # a zero-argument callable, seeded
    again = fedsim.run(scenario, out=tmp_path / "again", model=Net)
    assert all(torch.equal(built.state_dict[k], again.state_dict[k]) for k in built.state_dict)
    with pytest.raises(ScenarioError, match="got a int"):
        fedsim.run(scenario, out=tmp_path / "bad", model=3)


def test_resume_rebuilds_the_model_and_refuses_another_architecture(experiment, tmp_path, cli):
    scenario = fedsim.Scenario.load(str(experiment / "experiment.toml"), ["run.rounds=3"])
    stop = threading.Event()
    with pytest.raises(Interrupted):
        fedsim.run(scenario, out=tmp_path / "run", on_round=lambda row: stop.set(), stop=stop)
    full = fedsim.run(scenario, out=tmp_path / "full")
    resumed = resume(tmp_path / "run")
    assert all(torch.equal(full.state_dict[k], resumed.state_dict[k]) for k in full.state_dict)

    with pytest.raises(Interrupted):
        fedsim.run(scenario, out=tmp_path / "run2", on_round=lambda row: stop.set(), stop=stop)
    (experiment / "my_models.py").write_text(MODULE.replace("WIDTH", "8").replace("nn.ReLU()", "nn.Conv2d("
                                                                                    "width, width, 1), nn.ReLU()"))
    __import__("sys").modules.pop("my_models", None)
    code, _, err = cli("run", "--resume", str(tmp_path / "run2"))
    assert code == 2 and "model.factory: builds another architecture than the run's checkpoint (missing " \
        "1.weight, 1.bias" in err, err


def test_a_run_given_a_model_is_resumed_with_it(small_scenario, tmp_path, cli):
    stop = threading.Event()
    with pytest.raises(Interrupted):
        fedsim.run(small_scenario(), out=tmp_path / "run", model=Net, on_round=lambda row: stop.set(), stop=stop)
    code, _, err = cli("run", "--resume", str(tmp_path / "run"))
    assert code == 2 and "fedsim.resume(run_dir, model=" in err
    full = fedsim.run(small_scenario(), out=tmp_path / "full", model=Net)
    resumed = resume(tmp_path / "run", model=Net)
    assert all(torch.equal(full.state_dict[k], resumed.state_dict[k]) for k in full.state_dict)


@pytest.mark.slow  # ~8 s; make test keeps the own-model runs above
def test_the_readme_examples_run(tmp_path, monkeypatch, cli):
    """README's "Your own experiment" files, written out as a reader would copy them, and its commands."""
    import re
    import runpy
    from pathlib import Path

    from image_fixtures import retina

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    files = dict(re.findall(r"<!-- own-experiment: (\S+) -->\n```\w+\n(.*?)```", readme, re.DOTALL))
    assert set(files) == {"my_models.py", "experiment.toml", "pretrained.py", "given.py", "retina.toml",
                          "transforms.toml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "my_models", raising=False)
    code, _, err = cli("run", "experiment.toml", "--out", "runs/first", "-q")
    assert code == 0, err
    runpy.run_path("pretrained.py")
    code, _, err = cli("run", "experiment.toml", "--set", "model.init=start.pt", "--out", "runs/pretrained", "-q")
    assert code == 0, err
    runpy.run_path("given.py")
    retina(tmp_path / "data" / "Retina", clients=5, per_client=4, test=4, size=(36, 36))  # FedLD's layout, small
    code, _, err = cli("run", "retina.toml", "--out", "runs/retina", "-q")
    assert code == 0, err
    (tmp_path / "augmented.toml").write_text(files["retina.toml"] + files["transforms.toml"])
    code, _, err = cli("run", "augmented.toml", "--out", "runs/augmented", "-q")
    assert code == 0, err


def test_a_factory_model_trains_vectorised_and_under_dp_sgd(experiment, tmp_path):
    path = str(experiment / "experiment.toml")
    one_by_one = fedsim.run(fedsim.Scenario.load(path, ["run.vectorize=false"]), out=tmp_path / "seq")
    together = fedsim.run(fedsim.Scenario.load(path, ["run.vectorize=true"]), out=tmp_path / "vec")
    for key, value in one_by_one.state_dict.items():  # the stacked engine's own rounding (tests/golden.py)
        assert torch.allclose(together.state_dict[key], value, rtol=1e-5, atol=1e-6), key
    private = fedsim.run(fedsim.Scenario.load(path, ["privacy.mode=dp-sgd", "privacy.noise_multiplier=1.0",
                                                     "privacy.max_grad_norm=1.0"]), out=tmp_path / "dp")
    assert private.summary["privacy"]["epsilon"] > 0 and private.summary["privacy"]["steps"] > 0


@pytest.mark.slow  # spawned processes (~8 s)
def test_a_sweep_over_a_factory_s_arguments_in_parallel_processes(experiment, tmp_path, cli):
    """Each run of a sweep (here two processes at once) imports the factory from the scenario's folder."""
    (experiment / "widths.toml").write_text('base = "experiment.toml"\nseeds = [0]\n\n[grid]\n'
                                            '"model.args.width" = [2, 3]\n')
    code, _, err = cli("sweep", str(experiment / "widths.toml"), "--set", "run.rounds=1", "--parallel", "2",
                       "--out", str(tmp_path / "sweep"))
    assert code == 0, err
    built = sorted(json.loads(p.read_text())["parameters"] for p in (tmp_path / "sweep").glob("*/model.json"))
    assert built == [2 * 9 + 2 + 8 * 10 + 10, 3 * 9 + 3 + 12 * 10 + 10]
