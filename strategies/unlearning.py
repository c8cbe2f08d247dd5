"""`Unlearning(strategy, ...)`: serves machine-unlearning requests around any Flower strategy.

A request (forget a client, a class, or samples of one client) is served after round `at_round`: every listed
method runs from the same pre-request state (global model and a copy of the wrapped strategy's state), is
timed and evaluated against `retrain` (docs/algorithms.md, Machine unlearning), and training continues from the first listed
method's result. From then on the forgotten data never takes part again: a forgotten client is never sampled,
and every train / evaluate message tells clients which classes and samples to drop.

Client-side steps run in the ClientApp's `train.unlearn` handler; which node is which client is asked once with
a `query.partition` message. The history store (global models and client updates every `history_interval`
rounds) feeds FedEraser and PGA; a forgotten client's stored updates are deleted when its request is served.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedsim import protocol as p
from fedsim.arrays import record_to_state, state_to_record
from fedsim.checkpoint import decode, encode, object_state, restore_object
from fedsim.errors import FedsimError
from fedsim.protocol import LocalTraining
from fedsim.scenario import UnlearningRequest, UnlearningSection
from fedsim.seeding import derive_seed
from fedsim.unlearning.forget import Forgotten
from fedsim.unlearning.history import HistoryStore
from fedsim.unlearning.metrics import avg_gap

State = dict[str, torch.Tensor]
RANDOM_MODELS = 10  # PGA: random models averaged for the radius of the projection ball


class _Without(Grid):
    """A view of a Grid that never offers the excluded nodes (forgotten clients) for sampling."""

    def __init__(self, grid: Grid, excluded: set[int]) -> None:
        self._grid, self._excluded = grid, excluded

    @property
    def run(self):
        return self._grid.run

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    def create_message(self, *args, **kwargs) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._excluded]

    def push_messages(self, messages, timeout=None):
        return self._grid.push_messages(messages, timeout)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self._grid.send_and_receive(messages, timeout=timeout)


@dataclass
class _Job:
    """One request being served: what it forgets and the state every method starts from."""

    request: UnlearningRequest
    before: Forgotten  # forgotten by earlier requests
    target: Forgotten  # this request's data
    arrays: ArrayRecord  # the global model after round at_round
    grid: Grid

    @property
    def now(self) -> Forgotten:
        return self.before | self.target


def _weighted(replies: list[Message]) -> ArrayRecord | None:
    """Example-weighted mean of the replies' arrays (replies with no examples carry no weight)."""
    useful = [m.content for m in replies if not m.has_error() and m.content[p.METRICS][p.NUM_EXAMPLES] > 0]
    return aggregate_arrayrecords(useful, p.NUM_EXAMPLES) if useful else None


def _mean_update(updates: Iterable[tuple[State, int]]) -> State:
    updates = list(updates)
    total = sum(n for _, n in updates)
    return {k: sum(u[k].double() * (n / total) for u, n in updates).float() for k in updates[0][0]}


def saliency_mask(gradients: State, fraction: float) -> State:
    """SalUn's mask: 1 for the top `fraction` of |gradient| ranked over all parameters together."""
    flat = torch.cat([g.abs().flatten() for g in gradients.values()])
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[torch.topk(flat, max(1, math.ceil(fraction * len(flat)))).indices] = True
    masks, start = {}, 0
    for key, g in gradients.items():
        masks[key] = chosen[start : start + g.numel()].view(g.shape)
        start += g.numel()
    return masks


def apply_mask(state: State, start: State, mask: State) -> State:
    """theta = m * theta + (1 - m) * theta_start, exactly (entries without a mask keep their start value)."""
    return {k: torch.where(mask[k], v, start[k]) if k in mask else start[k].clone() for k, v in state.items()}


def calibrate(new: State, old: State) -> State:
    """FedEraser: per layer, the new update's direction with the old update's norm."""
    out = {}
    for k, u in new.items():
        norm = u.norm()
        out[k] = u * (old[k].norm() / norm) if norm > 0 else old[k].clone()
    return out


class Unlearning(Strategy):
    """Wrap `strategy`; serve `requests` (and `request_unlearning(...)` calls) at their rounds.

    `local` is the clients' training setup (unlearning steps start from it); `evaluate(arrays, this_request,
    everything_forgotten, pre_request_arrays)` returns a method's metrics (fedsim.unlearning.metrics);
    `random_model(seed)` a freshly initialised state dict (PGA's radius, the blindspot model).
    """

    def __init__(self, strategy: Strategy, requests: Iterable[UnlearningRequest] = (), *,
                 settings: UnlearningSection | None = None, local: LocalTraining | None = None, seed: int = 0,
                 timeout: float | None = None, store: HistoryStore | None = None,
                 evaluate: Callable[[ArrayRecord, Forgotten, Forgotten, ArrayRecord], dict] | None = None,
                 random_model: Callable[[int], State] | None = None) -> None:
        self.inner, self._pristine = strategy, copy.deepcopy(strategy)
        self.requests = list(requests)
        self.settings = settings or UnlearningSection()
        self.local = dataclasses.replace(local or LocalTraining(), loss="ce", proximal_mu=0.0)
        self.seed, self.timeout, self.store = seed, timeout, store
        self.evaluate, self.random_model = evaluate, random_model
        self.forgotten = Forgotten()
        self.results: list[dict] = []  # one row per (request, method)
        self._nodes: dict[int, int] = {}  # client (partition) id -> node id
        self._initial: ArrayRecord | None = None
        self._train_config = ConfigRecord()
        self._sent: ArrayRecord | None = None
        self._retrained: dict[tuple, tuple[ArrayRecord, Strategy, dict]] = {}
        self._last_round = 0

    @property
    def min_train_nodes(self) -> int:
        return getattr(self.inner, "min_train_nodes", 1)

    @property
    def min_available_nodes(self) -> int:
        return getattr(self.inner, "min_available_nodes", 1)

    def request_unlearning(self, kind: str, target: int, method: str | list[str] = "retrain",
                           samples: list[int] | None = None, at_round: int | None = None) -> None:
        """Queue a request; without `at_round` it is served before the next round."""
        at_round = self._last_round if at_round is None else at_round
        if at_round < 1:
            raise ValueError("nothing has been trained yet; request unlearning after round 1")
        self.requests.append(UnlearningRequest(at_round=at_round, kind=kind, target=target, samples=samples,
                                               method=method))

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """What a resumed run needs (the retrain cache is rebuilt on demand, identically)."""
        return {"inner": object_state(self.inner), "forgotten": encode(self.forgotten.key()),
                "requests": encode([r.model_dump() for r in self.requests]), "results": encode(self.results),
                "nodes": encode(self._nodes), "initial": encode(self._initial),
                "train_config": encode(self._train_config), "last_round": self._last_round}

    def restore_checkpoint(self, state: dict) -> None:
        restore_object(self.inner, state["inner"])
        self.forgotten = Forgotten.from_key(decode(state["forgotten"]))
        self.requests = [UnlearningRequest(**r) for r in decode(state["requests"])]
        self.results, self._nodes = decode(state["results"]), decode(state["nodes"])
        self._initial, self._train_config = decode(state["initial"]), decode(state["train_config"])
        self._last_round = int(state["last_round"])

    def purge(self) -> None:
        """Delete every stored update of a forgotten client. Runs before each round; call it after the last
        round too (fedsim's server calls it after every checkpoint, so a resumed run can serve a request again)."""
        if self.store is not None:
            for client in self.forgotten.clients:
                self.store.forget_client(client)

    # ---- Strategy ------------------------------------------------------------------------------------------
    def summary(self) -> None:
        self.inner.summary()

    def _excluded(self, forgotten: Forgotten) -> set[int]:
        return {self._nodes[c] for c in forgotten.clients if c in self._nodes}

    def _with_forgotten(self, config: ConfigRecord, forgotten: Forgotten) -> ConfigRecord:
        config = ConfigRecord(dict(config))
        if forgotten:
            forgotten.write(config, p.FORGET)
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if server_round == 1:
            self._initial, self._train_config = arrays, ConfigRecord(dict(config))
        self.purge()  # clients forgotten last round (fedsim's server also purges right after each checkpoint)
        due = [r for r in self.requests if r.at_round == server_round - 1]
        if (due or self.store is not None) and not self._nodes:
            self._discover(grid)
        if due:
            sampling = random.getstate()
            for request in due:
                arrays = self._serve(request, arrays, grid)
            random.setstate(sampling)
        self._sent = arrays
        return self.inner.configure_train(server_round, arrays, self._with_forgotten(config, self.forgotten),
                                          _Without(grid, self._excluded(self.forgotten)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._last_round = server_round
        if self.store is not None and self.store.due(server_round):
            self._store(server_round, replies)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, self._with_forgotten(config, self.forgotten),
                                             _Without(grid, self._excluded(self.forgotten)))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    # ---- bookkeeping ---------------------------------------------------------------------------------------
    def _discover(self, grid: Grid) -> None:
        """Ask every node which client it is (a `query.partition` message each); retried for missing ones."""
        for _ in range(3):
            missing = [n for n in grid.get_node_ids() if n not in self._nodes.values()]
            if not missing:
                return
            messages = [Message(RecordDict(), dst_node_id=n, message_type=p.QUERY_PARTITION) for n in missing]
            for reply in grid.send_and_receive(messages, timeout=self.timeout):
                if not reply.has_error():
                    self._nodes[int(reply.content[p.METRICS][p.PARTITION_ID])] = reply.metadata.src_node_id

    def _store(self, server_round: int, replies: list[Message]) -> None:
        clients = {node: pid for pid, node in self._nodes.items()}
        sent = record_to_state(self._sent)  # read-only: updates are new tensors, the store only saves it
        updates = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in clients:
                continue
            state = reply.content[p.ARRAYS].to_torch_state_dict()
            updates[clients[node]] = ({k: state[k] - sent[k] for k in sent},
                                      int(reply.content[p.METRICS][p.NUM_EXAMPLES]))
        self.store.save(server_round, sent, updates)

    # ---- serving a request ---------------------------------------------------------------------------------
    def _serve(self, request: UnlearningRequest, arrays: ArrayRecord, grid: Grid) -> ArrayRecord:
        target = Forgotten.of(request.kind, request.target, request.samples)
        job = _Job(request, self.forgotten, target, arrays, grid)
        remaining = len(self._nodes) - len(job.now.clients)
        needed = max(getattr(self.inner, "min_available_nodes", 1), getattr(self.inner, "min_train_nodes", 1))
        if remaining < needed:
            raise FedsimError(f"unlearning request (client {request.target})",
                              f"only {remaining} clients would remain but the strategy needs {needed}",
                              "lower strategy.min_available_nodes / min_train_nodes")
        outcomes = []
        for name in request.method:
            start = time.perf_counter()
            new_arrays, strategy, rounds = self._run_method(name, job)
            outcomes.append((name, new_arrays, strategy, rounds, time.perf_counter() - start))
        if self.evaluate is not None:
            self._report(job, outcomes)
        self.forgotten = job.now  # the client's stored updates go at the end of the round (purge)
        _, new_arrays, self.inner, _, _ = outcomes[0]
        return new_arrays

    def _report(self, job: _Job, outcomes: list) -> None:
        reference_arrays, _, reference = self._retrain(job)
        baseline = self.evaluate(reference_arrays, job.target, job.now, job.arrays)
        described = {"at_round": job.request.at_round, "kind": job.request.kind, "target": job.request.target}
        if job.request.samples is not None:
            described["samples"] = len(job.request.samples)
        for name, arrays, _, rounds, elapsed in outcomes:
            if name == "retrain":
                elapsed = reference["time_s"]
            measured = self.evaluate(arrays, job.target, job.now, job.arrays)
            row = {"request": described, "method": name, **{k: round(v, 4) for k, v in measured.items()}}
            row["avg_gap"] = round(avg_gap(measured, baseline), 4)
            if "relearn_steps" in row:  # regression: the anamnesis index
                row["ain"] = round(row["relearn_steps"] / baseline["relearn_steps"], 4) if baseline["relearn_steps"] \
                    else None
            row.update(time_s=round(elapsed, 4), rounds=rounds,
                       speedup=round(reference["time_s"] / elapsed, 3) if elapsed > 0 else None)
            self.results.append(row)

    def _run_method(self, name: str, job: _Job) -> tuple[ArrayRecord, Strategy, int]:
        if name == "retrain":
            arrays, strategy, info = self._retrain(job)
            return arrays, copy.deepcopy(strategy), info["rounds"]
        strategy = copy.deepcopy(self.inner)
        arrays, rounds = getattr(self, "_" + name.replace("-", "_"))(job, strategy)
        return arrays, strategy, rounds

    def _budget(self, name: str) -> tuple[int, LocalTraining]:
        s = self.settings
        own = s.per_method.get(name)
        rounds = own.rounds if own and own.rounds else s.rounds
        local = dataclasses.replace(self.local, local_epochs=own.epochs if own and own.epochs else s.epochs,
                                    lr=own.lr if own and own.lr else (s.lr or self.local.lr),
                                    batch_size=s.batch_size or self.local.batch_size)
        return rounds, local

    def _round_number(self, job: _Job, step: int) -> int:
        """Server-round numbers of unlearning rounds: distinct from training rounds, for seeding."""
        return 1_000_000 * (step + 1) + job.request.at_round

    def _train_round(self, strategy: Strategy, grid: Grid, arrays: ArrayRecord, server_round: int,
                     forgotten: Forgotten, overrides: dict | None = None) -> ArrayRecord:
        """One ordinary round of `strategy` without the forgotten data; the model is unchanged if all fail."""
        config = self._with_forgotten(self._train_config, forgotten)
        config.update(overrides or {})
        random.seed(derive_seed(self.seed, server_round, 0))
        messages = strategy.configure_train(server_round, arrays, config, _Without(grid, self._excluded(forgotten)))
        new, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages, timeout=self.timeout))
        return new if new is not None else arrays

    def _client_step(self, job: _Job, method: str, step: int, arrays: ArrayRecord, local: LocalTraining,
                     nodes: list[int] | None = None, extra: dict | None = None,
                     records: dict[str, ArrayRecord] | None = None) -> list[Message]:
        """Send one `train.unlearn` step to `nodes` (default: every client not already forgotten)."""
        config = local.to_config()
        config.update({p.METHOD: method, p.SERVER_ROUND: self._round_number(job, step), p.UNLEARN_STEP: step,
                       **(extra or {})})
        job.before.write(config, p.FORGET)
        job.target.write(config, p.UNLEARN_TARGET)
        if nodes is None:
            nodes = sorted(set(job.grid.get_node_ids()) - self._excluded(job.before))
        content = RecordDict({p.ARRAYS: arrays, p.CONFIG: config, **(records or {})})
        messages = [Message(content, dst_node_id=n, message_type=p.UNLEARN) for n in nodes]
        return [m for m in job.grid.send_and_receive(messages, timeout=self.timeout) if not m.has_error()]

    def _federated_steps(self, job: _Job, method: str, records: dict | None = None,
                         after: Callable[[ArrayRecord], ArrayRecord] | None = None,
                         nodes: list[int] | None = None) -> tuple[ArrayRecord, int]:
        """`rounds` rounds of one client step, example-weighted average of the replies after each."""
        rounds, local = self._budget(method)
        arrays = job.arrays
        for step in range(rounds):
            arrays = _weighted(self._client_step(job, method, step, arrays, local, nodes, records=records)) or arrays
            if after is not None:
                arrays = after(arrays)
        return arrays, rounds

    # ---- methods -------------------------------------------------------------------------------------------
    def _retrain(self, job: _Job) -> tuple[ArrayRecord, Strategy, dict]:
        """The reference: the same run from the initial model and seeds, forgotten data absent from round 1
        (computed once per set of forgotten data)."""
        key = job.now.key()
        if key not in self._retrained:
            start, strategy, arrays = time.perf_counter(), copy.deepcopy(self._pristine), self._initial
            for server_round in range(1, job.request.at_round + 1):
                arrays = self._train_round(strategy, job.grid, arrays, server_round, job.now)
            info = {"time_s": time.perf_counter() - start, "rounds": job.request.at_round}
            self._retrained[key] = (arrays, strategy, info)
        return self._retrained[key]

    def _finetune(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        rounds, local = self._budget("finetune")
        arrays = job.arrays
        for step in range(rounds):
            arrays = self._train_round(strategy, job.grid, arrays, self._round_number(job, step), job.now,
                                       {p.LOCAL_EPOCHS: local.local_epochs, p.LR: local.lr})
        return arrays, rounds

    def _holders(self, job: _Job) -> list[int] | None:
        """The nodes holding this request's data, when the request says (client, samples); else None: all."""
        return None if job.request.kind == "class" else [self._nodes[job.request.target]]

    def _gradient_ascent(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        return self._federated_steps(job, p.GRADIENT_ASCENT, nodes=self._holders(job))

    def _random_label(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        return self._federated_steps(job, p.RANDOM_LABEL)

    def _gaussian(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        return self._federated_steps(job, p.GAUSSIAN)

    def _salun(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        """Saliency gradients from the clients holding forgotten data (summed), the mask, then masked RL;
        the server re-applies the mask after aggregating, so unmasked weights are exactly the start's."""
        _, local = self._budget("salun")
        replies = self._client_step(job, p.SALIENCY, 0, job.arrays, local, self._holders(job))
        gradients: State = {}
        for reply in replies:
            for key, g in reply.content[p.ARRAYS].to_torch_state_dict().items():
                gradients[key] = gradients.get(key, 0) + g
        mask = saliency_mask(gradients, self.settings.salun_fraction)
        start = record_to_state(job.arrays)  # read-only (apply_mask builds new tensors)

        def restore(arrays: ArrayRecord) -> ArrayRecord:
            return state_to_record(apply_mask(arrays.to_torch_state_dict(), start, mask))

        arrays, rounds = self._federated_steps(job, p.SALUN, {p.MASK: state_to_record(mask)}, after=restore)
        return arrays, rounds + 1

    def _federaser(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        """Calibrated retraining from the stored rounds, without the target client."""
        target = job.request.target
        stored = [t for t in (self.store.rounds() if self.store else []) if t <= job.request.at_round]
        if not stored:
            raise FedsimError("unlearning", "federaser needs the history store, which holds no rounds",
                              "keep the history store (it is on whenever [unlearning] is set)")
        epochs = math.ceil(self.settings.federaser_ratio * self.local.local_epochs)
        keep = job.before.clients | {target}

        def old_update(t: int) -> tuple[dict[int, tuple[State, int]], State | None]:
            updates = {pid: u for pid, u in self.store.updates(t).items() if pid not in keep}
            return updates, (_mean_update(updates.values()) if updates else None)

        arrays_state = self.store.global_model(stored[0])
        _, first = old_update(stored[0])
        if first is not None:
            arrays_state = {k: v + first[k] for k, v in arrays_state.items()}
        for t in stored[1:]:
            updates, old = old_update(t)
            if old is None:
                continue
            config = self._with_forgotten(self._train_config, job.now)
            config.update({p.SERVER_ROUND: t, p.LOCAL_EPOCHS: epochs})
            content = RecordDict({p.ARRAYS: state_to_record(arrays_state), p.CONFIG: config})
            messages = [Message(content, dst_node_id=self._nodes[pid], message_type=p.TRAIN) for pid in updates]
            replies = [m for m in job.grid.send_and_receive(messages, timeout=self.timeout) if not m.has_error()]
            if not replies:
                continue
            new = _mean_update([({k: v - arrays_state[k] for k, v in m.content[p.ARRAYS].to_torch_state_dict().items()},
                                 int(m.content[p.METRICS][p.NUM_EXAMPLES])) for m in replies])
            step = calibrate(new, old)
            arrays_state = {k: v + step[k] for k, v in arrays_state.items()}
        return state_to_record(arrays_state), len(stored) - 1

    def _pga(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        """Halimi et al.: remove the target's last stored contribution, projected gradient ascent by the target
        within a ball around that reference, then ordinary rounds without it."""
        target = job.request.target
        last = [t for t in (self.store.rounds() if self.store else []) if t <= job.request.at_round
                and target in self.store.updates(t)]
        if not last:
            raise FedsimError(f"unlearning request (client {target})",
                              "pga needs the client's stored update, but the history store has none",
                              "store every round: unlearning.history_interval = 1")
        if self.random_model is None:
            raise FedsimError("unlearning", "pga needs random models for its radius", "pass random_model=")
        stored = self.store.updates(last[-1])
        n = len(stored)
        sent = self.store.global_model(last[-1])
        w = record_to_state(job.arrays)
        w_target = {k: sent[k] + stored[target][0][k] for k in sent}
        w_ref = {k: (n * w[k] - w_target[k]) / (n - 1) if n > 1 else w[k].clone() for k in w}
        distances = []
        for i in range(RANDOM_MODELS):
            rand = self.random_model(derive_seed(self.seed, job.request.at_round, i, 11))
            distances.append(sum((w_ref[k] - rand[k]).pow(2).sum() for k in w_ref
                                 if torch.is_floating_point(w_ref[k])).item())
        radius = math.sqrt(sum(distances) / len(distances) / 3)
        s = self.settings
        local = dataclasses.replace(self.local, lr=s.pga_lr, local_epochs=s.pga_epochs, momentum=0.9,
                                    weight_decay=0.0)
        replies = self._client_step(job, p.PGA, 0, state_to_record(w_ref), local, nodes=[self._nodes[target]],
                                    extra={p.CLIP: s.pga_clip, p.RADIUS: radius})
        arrays = replies[0].content[p.ARRAYS] if replies else state_to_record(w_ref)
        rounds, _ = self._budget("pga")
        for step in range(rounds):
            arrays = self._train_round(strategy, job.grid, arrays, self._round_number(job, step + 1), job.now)
        return arrays, rounds + 1

    def _blindspot(self, job: _Job, strategy: Strategy) -> tuple[ArrayRecord, int]:
        """A fresh model trained on retained data only, then the blindspot loss on every client."""
        if self.random_model is None:
            raise FedsimError("unlearning", "blindspot needs a fresh model to train", "pass random_model=")
        fresh = state_to_record(self.random_model(derive_seed(self.seed, job.request.at_round, 13)))
        blind = self._train_round(copy.deepcopy(self._pristine), job.grid, fresh, self._round_number(job, 0),
                                  job.now, {p.LOCAL_EPOCHS: self.settings.blindspot_epochs})
        rounds, local = self._budget("blindspot")
        arrays = job.arrays
        for step in range(rounds):
            replies = self._client_step(job, p.BLINDSPOT_STEP, step + 1, arrays, local,
                                        extra={p.BETA: self.settings.blindspot_beta}, records={p.BLINDSPOT: blind})
            arrays = _weighted(replies) or arrays
        return arrays, rounds + 1
