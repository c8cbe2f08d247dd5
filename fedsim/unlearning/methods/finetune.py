"""`rounds` rounds of the run's own strategy on retained data.

FT: ordinary rounds of the wrapped strategy (its own sampling and aggregation) with every forgotten example
dropped, `epochs` local epochs at the unlearning learning rate.
"""

from __future__ import annotations

from fedsim import protocol as p
from fedsim.unlearning.methods.base import Method, Result


def serve(session, job, strategy) -> Result:
    rounds, local = session.budget("finetune")
    arrays = job.arrays
    for step in range(rounds):
        arrays = session.train_round(strategy, job.grid, arrays, session.round_number(job, step), job.now,
                                     {p.LOCAL_EPOCHS: local.local_epochs, p.LR: local.lr})
    return Result(arrays, rounds)


METHOD = Method("finetune", __doc__, serve, position=1)
