"""`rounds` rounds of the run's own strategy on retained data.

FT: ordinary rounds of the wrapped strategy (its own sampling and aggregation) with every forgotten example
dropped, `epochs` local epochs at the unlearning learning rate.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from fedsim import protocol as p
from fedsim.unlearning.methods.base import Job, Method, Result, Session


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    rounds, local = session.budget("finetune")
    arrays = job.arrays
    for step in range(rounds):
        arrays = session.train_round(strategy, job.grid, arrays, session.round_number(job, step), job.now,
                                     {p.LOCAL_EPOCHS: local.local_epochs, p.LR: local.lr})
    return Result(arrays, rounds)


METHOD = Method("finetune", __doc__, serve, position=1)
