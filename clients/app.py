"""fedsim's one Flower ClientApp: local training, evaluation and unlearning steps on the node's partition.

Every handler reads its instructions from the Message's ConfigRecord (keys and settings: fedsim.protocol) and
its data from `context.node_config["partition-id"]`; the data and model every client shares come from the
run config (fedsim.clients.workspace.ClientSpec).
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import features
from fedsim import protocol as p
from fedsim._flower import reply_with
from fedsim.arrays import record_to_state, state_to_record
from fedsim.clients.workspace import Workspace, workspace
from fedsim.errors import FedsimError
from fedsim.evaluation import evaluate, measured_loss, outputs_of
from fedsim.features import ClientJob, RoundSetup
from fedsim.inputs import augmentation_generator
from fedsim.models import norm_keys
from fedsim.protocol import LocalTraining
from fedsim.seeding import derive_seed, derive_seeds
from fedsim.training import train_locally
from fedsim.unlearning.forget import Forgotten
from fedsim.unlearning.methods import client_steps
from fedsim.unlearning.methods.base import ClientWork, Split

app = ClientApp()


def partition_of(context: Context, ws: Workspace, config: ConfigRecord | None = None
               ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The node's partition, without the examples the server says are forgotten (unlearning)."""
    pid = int(context.node_config[p.NODE_PARTITION])
    x, y = ws.partition(pid)
    if config is not None and f"{p.FORGET}-clients" in config:
        keep = Forgotten.read(config, p.FORGET).kept(pid, y.cpu()).to(x.device)
        x, y = x[keep], y[keep]
    return pid, x, y


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on the partition: plain (fedsim.training), or the trainer of the feature whose settings the
    config carries (fedsim.features)."""
    ws = workspace(context)
    config: ConfigRecord = msg.content[p.CONFIG]
    pid, x, y = partition_of(context, ws, config)
    setup = round_setup(ws, config, ws.load_global(msg.content[p.ARRAYS]))
    local_norms = bool(config.get(p.LOCAL_NORMS, False))
    if local_norms:
        restore_local_norms(setup.model, context.state)
    metrics = received_loss(config, setup.model, x, y, ws.task)
    job = ClientJob(pid, x, y, train_seed(ws, config, pid), context.state)
    feature, settings = features.client_trainer(config)
    if feature is not None:
        metrics.update(feature.train(settings, setup, job))
    else:
        metrics.update(train_locally(setup.model, x, y, setup.local, ws.task, torch.Generator().manual_seed(job.seed),
                                     augmentation=augmentation_generator(job.seed)))
    if local_norms:
        keep_local_norms(setup.model, context.state)
    reply = train_reply(msg, setup.model.state_dict(), reply_metrics(config, metrics, len(x)))
    ws.release()
    return reply


def restore_local_norms(model: torch.nn.Module, state: RecordDict) -> None:
    """FedBN: the client's own normalisation layers (from its previous round) replace the global model's."""
    if p.LOCAL_NORMS_STATE in state:
        model.load_state_dict(record_to_state(state[p.LOCAL_NORMS_STATE]), strict=False)  # copied onto its device


def keep_local_norms(model: torch.nn.Module, state: RecordDict) -> None:
    """FedBN: keep the normalisation layers this round trained, for the client's next round."""
    current = model.state_dict()
    state[p.LOCAL_NORMS_STATE] = state_to_record({k: current[k] for k in norm_keys(model)})


def round_setup(ws: Workspace, config: ConfigRecord, model: torch.nn.Module) -> RoundSetup:
    """What every client of a train message shares."""
    return RoundSetup(model, LocalTraining.from_config(config), ws.task, ws.data.info.num_classes, ws.spec.seed,
                      ws.spec.vectorize_memory_mb)


def received_loss(config: ConfigRecord, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: str
                  ) -> dict[str, float]:
    """The received model's loss on the partition, when the config asks for it (before training)."""
    if not config.get(p.REPORT_TRAIN_LOSS, False):
        return {}
    # in batches bounded as evaluation's are (one batch unless the examples are large images)
    return {p.TRAIN_LOSS: measured_loss(task, outputs_of(model, x), y)}


def train_seed(ws: Workspace, config: ConfigRecord, pid: int) -> int:
    """The seed of a client's batch order in a round: (run seed, round, client)."""
    return derive_seed(ws.spec.seed, int(config[p.SERVER_ROUND]), pid)


def train_seeds(ws: Workspace, config: ConfigRecord, pids: list[int]) -> list[int]:
    """train_seed of every client in `pids`, computed together."""
    return derive_seeds([[ws.spec.seed, int(config[p.SERVER_ROUND]), pid] for pid in pids])


def reply_metrics(config: ConfigRecord, metrics: dict[str, float], num_examples: int) -> dict[str, float]:
    """The metrics a train reply carries: those the config allows, and its weight `num_examples`."""
    if not config.get(p.REPORT_TRAIN_METRICS, True):  # under privacy: epsilon does not cover the training loss
        metrics = {k: v for k, v in metrics.items() if k in p.DP_REPORT}
    return {**metrics, p.NUM_EXAMPLES: num_examples}


def train_reply(msg: Message, state: dict[str, torch.Tensor], metrics: dict[str, float]) -> Message:
    """A train reply: the trained weights and their metrics (reply_metrics)."""
    return reply_with(msg, {p.ARRAYS: state_to_record(state), p.METRICS: MetricRecord(metrics)})


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Federated evaluation: the global model on this node's partition."""
    ws = workspace(context)
    _, x, y = partition_of(context, ws, msg.content.get(p.CONFIG))
    metrics = evaluate(ws.load_global(msg.content[p.ARRAYS]), x, y, ws.task)
    metrics[p.NUM_EXAMPLES] = len(x)
    ws.release()
    return Message(content=RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)


def unlearning_split(pid: int, x: torch.Tensor, y: torch.Tensor, config: ConfigRecord) -> Split:
    """(x_r, y_r, x_f, y_f): retained data, and the data this request forgets (data forgotten by earlier
    requests is in neither)."""
    present = Forgotten.read(config, p.FORGET).kept(pid, y)
    requested = ~Forgotten.read(config, p.UNLEARN_TARGET).kept(pid, y)
    f, r = present & requested, present & ~requested
    return x[r], y[r], x[f], y[f]


@app.train("unlearn")
def unlearning_step(msg: Message, context: Context) -> Message:
    """One client's part of an unlearning method: the step its config names (fedsim.unlearning.methods), on
    the retained / forgotten split. Replies with the model (or what the step sends instead) and `num-examples`,
    the weight for aggregation."""
    ws = workspace(context)
    config: ConfigRecord = msg.content[p.CONFIG]
    pid = int(context.node_config[p.NODE_PARTITION])
    name = str(config[p.METHOD])
    step = client_steps().get(name)
    if step is None:
        raise FedsimError("unlearning.method", f"no client step '{name}'", "use a method from `fedsim list`")
    data = unlearning_split(pid, *ws.partition(pid), config)
    generator = torch.Generator().manual_seed(
        derive_seed(ws.spec.seed, int(config[p.SERVER_ROUND]), pid, int(config[p.UNLEARN_STEP])))
    work = ClientWork(model=ws.load_global(msg.content[p.ARRAYS]), data=data, local=LocalTraining.from_config(config),
                      generator=generator, config=config, content=msg.content, task=ws.task,
                      num_classes=ws.data.info.num_classes, device=ws.device,
                      new_model=ws.new_model)
    result = step(work)
    state = result.state if result.state is not None else work.model.state_dict()
    metrics = {**result.metrics, p.NUM_EXAMPLES: result.weight, p.FORGOTTEN_COUNT: len(data[2])}
    content = RecordDict({p.ARRAYS: state_to_record(state), p.METRICS: MetricRecord(metrics)})
    ws.release()
    return Message(content=content, reply_to=msg)


@app.query("partition")
def partition_id(msg: Message, context: Context) -> Message:
    """Which client (partition) this node is: the server maps unlearning requests to nodes with it."""
    pid = int(context.node_config[p.NODE_PARTITION])
    return Message(content=RecordDict({p.METRICS: MetricRecord({p.PARTITION_ID: pid})}), reply_to=msg)
