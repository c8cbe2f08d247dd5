"""fedsim's one Flower ClientApp: local training and evaluation on the node's partition.

Every handler reads its instructions from the Message's ConfigRecord and its data from
`context.node_config["partition-id"]`; the scenario (data, model) comes from `context.run_config`.
"""

from __future__ import annotations

import functools
import json
import math

import torch
from fedsim.clients import bags, dp_sgd, unlearn
from fedsim.clients.train import LocalTraining, train_locally
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.arrays import record_to_state, state_to_record
from fedsim.data import FederatedData, federated_data
from fedsim.errors import FedsimError
from fedsim.evaluation import evaluate, task_loss
from fedsim.models import build_model
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed
from fedsim.unlearning.forget import Forgotten

SCENARIO_KEY = "fedsim-scenario"  # run_config entry holding the resolved scenario as JSON
REPORT_TRAIN_LOSS = "report-train-loss"  # config flag: also report the global model's loss before training

app = ClientApp()


def select_device(preference: str, cuda_available: bool | None = None) -> torch.device:
    """'auto': CUDA when this process sees a GPU (a Ray actor given num_gpus > 0), else CPU."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if preference == "cuda" and not available:
        raise FedsimError("client.device", "'cuda' but no GPU is visible to this client",
                          "use device = 'auto', or give clients GPUs with run.resources.num_gpus")
    return torch.device("cuda" if preference != "cpu" and available else "cpu")


class _Workspace:
    """Per-process state shared by all virtual clients of one scenario: data cache and one model instance."""

    def __init__(self, scenario_json: str) -> None:
        self.scenario = Scenario.model_validate(json.loads(scenario_json))
        torch.set_num_threads(max(1, int(self.scenario.run.resources.num_cpus)))
        self.device = select_device(self.scenario.client.device)
        self.data: FederatedData = federated_data(self.scenario.data, self.scenario.run.seed)
        model = build_model(self.scenario.model, self.data.info)
        if self.scenario.privacy is not None and self.scenario.privacy.mode == "dp-sgd":
            model = dp_sgd.private_model(model, self.scenario.privacy)
        self.model = model.to(self.device)
        self._on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def partition(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Partition `pid` on this workspace's device (cached there too when that is a GPU)."""
        if self.device.type == "cpu":
            return self.data.partition(pid)
        if pid not in self._on_device:
            self._on_device[pid] = tuple(t.to(self.device) for t in self.data.partition(pid))
        return self._on_device[pid]

    def release(self) -> None:
        """Free cached CUDA memory after a task (the next client may be on another actor's share)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def task(self) -> str:
        return self.data.info.task

    def load_global(self, arrays: ArrayRecord) -> torch.nn.Module:
        """Load the received global model; the same ArrayRecord object is deserialised only once."""
        self.model.load_state_dict(record_to_state(arrays))
        return self.model


@functools.lru_cache(maxsize=4)
def _workspace(scenario_json: str) -> _Workspace:
    return _Workspace(scenario_json)


@functools.lru_cache(maxsize=4)
def _resolve(name_or_path: str) -> str:
    return Scenario.load(name_or_path).model_dump_json()


def workspace(context: Context) -> _Workspace:
    """fedsim's runtimes put the resolved scenario in the run config; `flwr run` puts its name or path."""
    scenario_json = context.run_config.get(SCENARIO_KEY) or _resolve(str(context.run_config["scenario"]))
    return _workspace(str(scenario_json))


def _partition(context: Context, ws: _Workspace, config: ConfigRecord | None = None
               ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The node's partition, without the examples the server says are forgotten (unlearning)."""
    pid = int(context.node_config["partition-id"])
    x, y = ws.partition(pid)
    if config is not None and "forget-clients" in config:
        keep = Forgotten.read(config, "forget").kept(pid, y.cpu()).to(x.device)
        x, y = x[keep], y[keep]
    return pid, x, y


@app.train()
def train(msg: Message, context: Context) -> Message:
    ws = workspace(context)
    config: ConfigRecord = msg.content["config"]
    pid, x, y = _partition(context, ws, config)
    model = ws.load_global(msg.content["arrays"])
    metrics: dict[str, float] = {}
    if config.get(REPORT_TRAIN_LOSS, False):
        with torch.no_grad():
            metrics["train_loss"] = task_loss(ws.task, model(x), y).item()
    seed = derive_seed(ws.scenario.run.seed, int(config["server-round"]), pid)
    local = LocalTraining.from_config(config)
    privacy = ws.scenario.privacy
    if privacy is not None and privacy.mode == "dp-sgd":
        planned = math.ceil(ws.scenario.run.rounds * ws.scenario.strategy.fraction_train)
        sigma = dp_sgd.client_noise(context.state, len(x), local, privacy, planned)
        dp_metrics, history = dp_sgd.train_dp_sgd(model, x, y, local, ws.task, seed, sigma, privacy,
                                                  dp_sgd.load_history(context.state))
        dp_sgd.save_history(context.state, history, sigma)
        metrics.update(dp_metrics)
    elif ws.scenario.bags is not None:  # the client sees only its bags' released targets, never y itself
        bag_index, targets = bags.released_bags(context.state, pid, y, ws.data.info.num_classes, ws.scenario.bags,
                                                ws.scenario.run.seed)
        metrics.update(bags.train_on_bags(model, x, bag_index, targets.to(x.device), local, ws.scenario.bags.rho,
                                          ws.task, torch.Generator().manual_seed(seed)))
    else:
        metrics.update(train_locally(model, x, y, local, ws.task, torch.Generator().manual_seed(seed)))
    metrics["num-examples"] = len(x)
    content = RecordDict({"arrays": state_to_record(model.state_dict()), "metrics": MetricRecord(metrics)})
    ws.release()
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Federated evaluation: the global model on this node's partition."""
    ws = workspace(context)
    _, x, y = _partition(context, ws, msg.content.get("config"))
    metrics = evaluate(ws.load_global(msg.content["arrays"]), x, y, ws.task)
    metrics["num-examples"] = len(x)
    ws.release()
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.train("unlearn")
def unlearning_step(msg: Message, context: Context) -> Message:
    """One client's part of an unlearning method (`method` in the config), on its retained / forgotten split.
    Replies with the model (or SalUn's saliency gradients) and `num-examples`, the weight for aggregation."""
    ws = workspace(context)
    config: ConfigRecord = msg.content["config"]
    pid = int(context.node_config["partition-id"])
    data = unlearn.split(pid, *ws.partition(pid), config)
    x_r, _, x_f, y_f = data
    model = ws.load_global(msg.content["arrays"])
    local = LocalTraining.from_config(config)
    method = str(config["method"])
    generator = torch.Generator().manual_seed(
        derive_seed(ws.scenario.run.seed, int(config["server-round"]), pid, int(config["unlearn-step"])))
    metrics: dict[str, float] = {}
    weight = len(x_r) + len(x_f)
    if method == "saliency":
        state, weight = unlearn.saliency_gradients(model, x_f, y_f, ws.task, local.batch_size), len(x_f)
    elif method in ("gradient-ascent", "pga"):
        metrics = unlearn.gradient_ascent(model, x_f, y_f, local, ws.task, generator, config.get("clip"),
                                          config.get("radius"))
        weight = len(x_f)
    elif method in ("random-label", "salun"):
        mask = {k: v.to(ws.device) for k, v in msg.content["mask"].to_torch_state_dict().items()} \
            if method == "salun" else None
        metrics = unlearn.relabel_and_train(model, data, ws.data.info.num_classes, local, generator, mask)
    elif method == "gaussian":
        metrics = unlearn.gaussian_targets(data, local, model, generator)
    elif method == "blindspot":
        blind = build_model(ws.scenario.model, ws.data.info).to(ws.device)
        blind.load_state_dict(msg.content["blindspot"].to_torch_state_dict())
        metrics = unlearn.blindspot(model, blind, data, local, float(config["beta"]), generator)
    else:
        raise FedsimError("unlearning.method", f"no client step '{method}'", "use a method from `fedsim list`")
    if method != "saliency":
        state = model.state_dict()
    metrics.update({"num-examples": weight, "forgotten": len(x_f)})
    content = RecordDict({"arrays": state_to_record(state), "metrics": MetricRecord(metrics)})
    ws.release()
    return Message(content=content, reply_to=msg)


@app.query("partition")
def partition_id(msg: Message, context: Context) -> Message:
    """Which client (partition) this node is: the server maps unlearning requests to nodes with it."""
    pid = int(context.node_config["partition-id"])
    return Message(content=RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)
