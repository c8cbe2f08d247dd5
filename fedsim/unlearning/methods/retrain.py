"""The reference; computed once per set of forgotten data and reused for every method's gap.

The same run from the same initial model, seeds and strategy, with the forgotten data absent from round 1
(`session.retrain`, cached per set of forgotten data).
"""

from __future__ import annotations

import copy

from flwr.serverapp.strategy import Strategy

from fedsim.unlearning.methods.base import Job, Method, Result, Session


def serve(session: Session, job: Job, strategy: Strategy) -> Result:
    arrays, retrained, info = session.retrain(job)
    return Result(arrays, info["rounds"], copy.deepcopy(retrained))


METHOD = Method("retrain", __doc__, serve, position=0)
