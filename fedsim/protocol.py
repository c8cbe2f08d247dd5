"""The client/server contract: every Message type, record key, config key and reply flag, in one place.

Both sides import this module and nothing of each other. A client acts only on what a Message's ConfigRecord
says (the settings below, written with `to_config` and read with `from_config`) plus its own partition; the
run config names the data and model every client shares (`CLIENT_SPEC`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from annotated_types import Ge, Gt, Lt  # constraints the scenario schema (pydantic) enforces on ClientSection

if TYPE_CHECKING:  # flwr loads with the first message, not with a scenario's validation (the schema imports this)
    from flwr.app import ConfigRecord

# ---- message types (Flower's "train"; its "evaluate" is only ever built by Flower's strategies; fedsim's own) ------
TRAIN = "train"
UNLEARN = "train.unlearn"  # one client step of an unlearning method
QUERY_PARTITION = "query.partition"  # which client (partition) a node is

# ---- run config ----------------------------------------------------------------------------------------------
CLIENT_SPEC = "fedsim-client"  # run_config entry: JSON of fedsim.clients.workspace.ClientSpec (data, model, ...)
SCENARIO = "scenario"  # run_config entry under `flwr run`: a scenario name or path the client resolves
NODE_PARTITION = "partition-id"  # node_config entry (Flower's convention): the node's partition (client id)

# ---- records of a Message's content ----------------------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the model sent, or the model / gradients replied
CONFIG = "config"  # ConfigRecord: the instructions
METRICS = "metrics"  # MetricRecord of a reply

# ---- config keys -----------------------------------------------------------------------------------------------
LOCAL_EPOCHS, LR = "local-epochs", "lr"  # LocalTraining's keys the server overrides for some rounds
LOSS, MARGIN_LAMBDA, MARGIN_REDUCTION = "loss", "margin-lambda", "margin-reduction"  # ... and FedLD sets
SERVER_ROUND = "server-round"  # set by every Flower strategy; seeds the client's generator with (seed, round, client)
REPORT_TRAIN_METRICS = "report-train-metrics"  # False under privacy: reply with accounting metrics only
REPORT_TRAIN_LOSS = "report-train-loss"  # also report the received model's loss before training (q-FedAvg)
METHOD = "method"  # UNLEARN: which client step (a step name of fedsim.unlearning.methods)
UNLEARN_STEP = "unlearn-step"  # UNLEARN: the step's index within its method, for seeding
FORGET = "forget"  # prefix of the keys listing data forgotten by served requests (fedsim.unlearning.forget)
UNLEARN_TARGET = "unlearn"  # prefix of the keys listing the data the current request forgets
LOCAL_NORMS = "local-norms"  # FedBN: the client keeps its own normalisation layers (fedsim.strategies.fedbn)

# ---- metric keys of replies ------------------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # the weight of a reply in example-weighted aggregation
TRAIN_LOSS = "train_loss"  # REPORT_TRAIN_LOSS: the received model's loss on the client's data
PARTITION_ID = "partition-id"  # QUERY_PARTITION reply
FORGOTTEN_COUNT = "forgotten"  # UNLEARN reply: how many of the client's examples the request forgets
EPSILON, EPSILON_NEXT = "epsilon", "epsilon-next"  # DP-SGD: spent so far / after one more round
NOISE_MULTIPLIER, SAMPLE_RATE, STEPS = "noise-multiplier", "sample-rate", "steps"  # DP-SGD: the accountant's inputs
DP_REPORT = (EPSILON, EPSILON_NEXT, NOISE_MULTIPLIER, SAMPLE_RATE, STEPS)

# ---- node state ------------------------------------------------------------------------------------------------
LOCAL_NORMS_STATE = "fedsim.local-norms"  # ArrayRecord in a client's context.state: its normalisation layers

# ---- reply flags -----------------------------------------------------------------------------------------------
EXHAUSTED = "privacy budget exhausted"  # starts the error reason of a DP-SGD client whose budget is spent
# (each unlearning method's client step names, config keys and records are in its module of
# fedsim.unlearning.methods)

S = TypeVar("S")


def _to_config(settings: Any, prefix: str = "") -> ConfigRecord:
    from flwr.app import ConfigRecord

    return ConfigRecord({prefix + f.name.replace("_", "-"): getattr(settings, f.name) for f in fields(settings)
                         if getattr(settings, f.name) is not None})


def _from_config(cls: type[S], config: ConfigRecord, prefix: str = "") -> S:
    values = {}
    for f in fields(cls):
        key = prefix + f.name.replace("_", "-")
        if key in config:
            values[f.name] = config[key]
    return cls(**values)


class SentSettings:
    """Settings sent in a ConfigRecord, each field under `PREFIX` + its name with dashes."""

    PREFIX = ""

    def to_config(self) -> ConfigRecord:
        return _to_config(self, self.PREFIX)

    @classmethod
    def from_config(cls, config: ConfigRecord):
        """The settings `config` carries, or None when it carries none (its first field's key is absent)."""
        first = cls.PREFIX + fields(cls)[0].name.replace("_", "-")
        return _from_config(cls, config, cls.PREFIX) if first in config else None


@dataclass(frozen=True)
class LocalTraining(SentSettings):
    """How a client trains locally, as sent in every train ConfigRecord (keys: the field names with dashes). The
    scenario's [client] section is these fields (with their ranges and defaults) plus `device`."""

    local_epochs: Annotated[int, Ge(1)] = 1
    batch_size: Annotated[int, Ge(1)] = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Gt(0)] = 0.1
    momentum: Annotated[float, Ge(0), Lt(1)] = 0.0
    weight_decay: Annotated[float, Ge(0)] = 0.0
    proximal_mu: Annotated[float, Ge(0)] = 0.0
    loss: Literal["ce", "fedld-margin"] = "ce"
    margin_lambda: Annotated[float, Ge(0)] = 0.1
    margin_reduction: Literal["batch", "mean"] = "batch"  # "batch" (reference: Frobenius norm over the batch)

    @classmethod
    def from_config(cls, config: ConfigRecord) -> LocalTraining:
        """The settings in `config`; absent keys keep their defaults."""
        return _from_config(cls, config)
