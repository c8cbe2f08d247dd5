"""FedBN (Li et al., ICLR 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization"):
FedAvg whose clients keep their own normalisation layers.

Every train config carries `protocol.LOCAL_NORMS`; a client then trains with the global model's weights except
its normalisation layers (every parameter and buffer of BatchNorm, InstanceNorm, GroupNorm and LayerNorm modules),
which it keeps from its own previous round in its node state (so they persist across rounds, runtimes and resume;
in its first round it starts from the global ones). Aggregation is Flower's FedAvg, unchanged: the server's model,
which central evaluation tests, carries the example-weighted mean of the clients' normalisation layers.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim import protocol


class FedBN(FedAvg):
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        config[protocol.LOCAL_NORMS] = True
        return super().configure_train(server_round, arrays, config, grid)
