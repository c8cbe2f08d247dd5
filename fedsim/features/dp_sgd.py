"""Sample-level DP-SGD (`privacy.mode = "dp-sgd"`), the whole feature: local training through Opacus
(Poisson-sampled batches, per-example clipping, Gaussian noise), one by one and vectorised (fedsim.stacked_dp_sgd),
its scenario checks, the settings it sends, and the server's ledger that retires clients whose budget is spent.

The client's accountant history (Opacus's list of (noise multiplier, sample rate, steps)) lives in
`context.state`, so epsilon composes over every round the client took part in. Randomness (batch sampling and
noise) is drawn from torch's generator seeded per (seed, round, client), so runs are reproducible.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsim import protocol
from fedsim.errors import FedsimError, ScenarioError
from fedsim.evaluation import task_loss
from fedsim.features.base import ClientJob, PrivacyFeature, RoundSetup, StackedTrainingFeature, ledger_entry, uncovered
from fedsim.inputs import augment, augmentation_generator
from fedsim.loop import RoundCallback
from fedsim.privacy import History, Ledger, epsilon_of, noise_multiplier
from fedsim.protocol import LocalTraining, SentSettings
from fedsim.stacked_dp_sgd import PrivateClient, train_stacked_dp_sgd
from fedsim.training import Stats, Step, make_optimizer, train_loop

STATE_KEY = "dp-sgd"


@dataclass(frozen=True)
class DPSGDSettings(SentSettings):
    """DP-SGD inside the client (keys prefixed `dp-`): noise given, or derived once from target_epsilon for
    `planned_rounds` rounds of the client; a client whose next round would exceed target_epsilon refuses it."""

    delta: float
    accountant: str
    max_grad_norm: float
    planned_rounds: int
    noise_multiplier: float | None = None
    target_epsilon: float | None = None

    PREFIX = "dp-"


def check_model(model: nn.Module) -> None:
    """Raise a one-line error naming the first layer Opacus cannot train with per-example gradients."""
    from opacus.validators import ModuleValidator

    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue
        errors = ModuleValidator.validate(module, strict=False)
        if errors:
            reason = str(errors[0]).split(".")[0]
            raise FedsimError("model", f"DP-SGD cannot train layer '{name}' ({type(module).__name__}): {reason}",
                              "set privacy.fix_model = true (Opacus swaps it), or use GroupNorm: model.norm = "
                              "'group' for a ResNet, model.batch_norm = false for cnn")


def private_model(model: nn.Module, fix_model: bool) -> nn.Module:
    """The model DP-SGD trains: with `fix_model`, Opacus's ModuleValidator.fix swaps layers it cannot
    train (BatchNorm -> GroupNorm); then every layer is checked."""
    if fix_model:
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)
    check_model(model)
    return model


def check_local_training(cfg: LocalTraining) -> None:
    """DP-SGD clips and noises per-example gradients: a loss term that is not a sum over examples (FedProx's
    proximal term, FedLD's batch-level margin) would be dropped by Opacus without a word, so it is refused."""
    if cfg.proximal_mu > 0:
        raise FedsimError("client.proximal_mu", "DP-SGD cannot train with a proximal term (Opacus noises "
                          "per-example gradients only)", "set proximal_mu = 0 and use a strategy other than fedprox")
    if cfg.loss != "ce":
        raise FedsimError("client.loss", f"DP-SGD cannot train with the '{cfg.loss}' loss (not a per-example sum)",
                          "use loss = 'ce' with privacy.mode = 'dp-sgd'")


def load_history(state: RecordDict) -> History:
    record = state.config_records.get(STATE_KEY)
    if record is None:
        return []
    return list(zip(record["noise"], record["rates"], record["steps"], strict=True))


def save_history(state: RecordDict, history: History, sigma: float) -> None:
    """Keep the (non-empty: saved after training) history and the client's noise multiplier."""
    noise, rates, steps = zip(*history, strict=True)
    state[STATE_KEY] = ConfigRecord({"noise": [float(s) for s in noise], "rates": [float(q) for q in rates],
                                     "steps": [int(t) for t in steps], "sigma": sigma})


def round_plan(n: int, cfg: LocalTraining) -> tuple[float, int]:
    """(sample rate q, optimizer steps) of one round of local DP-SGD on n examples."""
    batches = max(1, math.ceil(n / cfg.batch_size))
    return 1.0 / batches, batches * cfg.local_epochs


def client_noise(state: RecordDict, n: int, cfg: LocalTraining, privacy: DPSGDSettings) -> float:
    """The client's noise multiplier: given, or derived once for its whole planned run from target_epsilon."""
    record = state.config_records.get(STATE_KEY)
    if record is not None:
        return float(record["sigma"])
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    q, steps = round_plan(n, cfg)
    return noise_multiplier(privacy.target_epsilon, q, steps * max(1, privacy.planned_rounds), privacy.delta,
                            privacy.accountant)


def train_dp_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LocalTraining, task: str, seed: int,
                 sigma: float, privacy: DPSGDSettings, history: History) -> tuple[dict[str, float], History]:
    """One round of DP-SGD on (x, y), updating `model` in place; returns metrics and the extended history."""
    from opacus import PrivacyEngine

    check_local_training(cfg)
    q, steps = round_plan(len(x), cfg)
    spent = check_budget(history, sigma, q, steps, privacy)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # seeded on purpose: reproducible runs
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        quiet_gdp()
        torch.manual_seed(seed)
        local = copy.deepcopy(model)
        engine = PrivacyEngine(accountant=privacy.accountant)
        engine.accountant.history = list(history)
        loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size)
        private, optimizer, batches = engine.make_private(
            module=local, optimizer=make_optimizer(local, cfg), data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=privacy.max_grad_norm, poisson_sampling=True)
        # Opacus's Poisson sampler runs int(1 / q) batches an epoch, one short of the planned b when 1 / (1 / b)
        # rounds below b (b = 93, 99, 105, ...): run exactly the b the accountant is told about
        batches.batch_sampler.steps = steps // cfg.local_epochs

        augmentation = augmentation_generator(seed)

        def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
            xb, yb = batch
            outputs = private(augment(private, xb, augmentation))
            # an empty Poisson batch still takes a (noise-only) step, as the accountant assumes
            loss = task_loss(task, outputs, yb) if len(xb) else outputs.sum() * 0.0
            return Step(loss, loss, len(xb))

        epochs = (batch for _ in range(cfg.local_epochs) for batch in batches)
        stats = train_loop(private, epochs, cfg, loss_fn, optimizer=optimizer)
        new_history = [(float(s), float(r), int(t)) for s, r, t in engine.accountant.history]
    model.load_state_dict(local.state_dict())
    return round_metrics(stats, spent, new_history, sigma, q, steps, privacy), new_history


def quiet_gdp() -> None:
    """Inside warnings.catch_warnings(): Opacus's GDP warning, which `fedsim run` says once in its own words."""
    warnings.filterwarnings("ignore", message="GDP accounting is experimental")


def check_budget(history: History, sigma: float, q: float, steps: int, privacy: DPSGDSettings) -> float:
    """The epsilon spent after this round (its planned sigma, q, steps); raises EXHAUSTED past target_epsilon."""
    spent_next = epsilon_of([*history, (sigma, q, steps)], privacy.delta, privacy.accountant)
    if privacy.target_epsilon is not None and spent_next > privacy.target_epsilon:
        raise RuntimeError(f"{protocol.EXHAUSTED}: another round would reach epsilon {spent_next:.3f} > "
                           f"{privacy.target_epsilon}")
    return spent_next


def accountant_history(history: History, sigma: float, q: float, steps: int, accountant: str) -> History:
    """`history` after `steps` DP-SGD steps, as Opacus's accountant records them (one `step` call each)."""
    from opacus.accountants import create_accountant

    with warnings.catch_warnings():
        quiet_gdp()
        engine = create_accountant(accountant)
        engine.history = list(history)
        for _ in range(steps):
            engine.step(noise_multiplier=sigma, sample_rate=q)
    return [(float(s), float(r), int(t)) for s, r, t in engine.history]


def round_metrics(stats: Stats, spent: float, history: History, sigma: float, q: float, steps: int,
                  privacy: DPSGDSettings) -> dict[str, float]:
    """A DP-SGD round's reply metrics, given the history after it (its epsilon is `spent`: the accountant recorded
    exactly the planned sigma, q, steps of this round, tested)."""
    after_next = epsilon_of([*history, (sigma, q, steps)], privacy.delta, privacy.accountant)
    return {**stats.metrics(), protocol.EPSILON: spent, protocol.EPSILON_NEXT: after_next,
            protocol.NOISE_MULTIPLIER: sigma, protocol.SAMPLE_RATE: q, protocol.STEPS: sum(t for _, _, t in history)}


def planned_rounds(scenario) -> int:
    """The rounds a DP-SGD client plans its budget for (its expected share of the run's rounds)."""
    return math.ceil(scenario.run.rounds * scenario.strategy.fraction_train)


class DPSGDLedger(RoundCallback):
    """The ledger of a DP-SGD run (the worst client's epsilon, a `privacy` entry in every row) and its hard budget:
    a client whose next round would exceed target_epsilon is retired (no longer sampled), and the run stops once
    fewer than `needed` clients with budget remain."""

    def __init__(self, privacy, grid, needed: int, released: list[str]) -> None:
        self.privacy, self.grid, self.needed, self.uncovered = privacy, grid, needed, released
        self.clients: dict[int, dict] = {}  # latest report per node
        self.retired: set[int] = set()
        self.stop_reason: str | None = None

    def before_round(self, server_round: int) -> str | None:
        return self.stop_reason

    def on_train_replies(self, server_round: int, replies: list[Message]) -> None:
        for msg in replies:
            self._observe(msg)
        if len(self.grid.get_node_ids()) < self.needed:
            self.stop_reason = (f"privacy budget: {len(self.retired)} clients have spent their budget and "
                                f"fewer than {self.needed} remain")

    def round_metrics(self, server_round: int) -> dict:
        p = self.privacy
        if self.clients:
            worst = max(self.clients.values(), key=lambda c: c[protocol.EPSILON])
            ledger = Ledger(worst[protocol.EPSILON], p.delta, p.accountant, worst[protocol.NOISE_MULTIPLIER],
                            worst[protocol.SAMPLE_RATE], int(worst[protocol.STEPS]))
        else:
            ledger = Ledger(0.0, p.delta, p.accountant, p.noise_multiplier or 0.0, 0.0, 0)
        return {"privacy": ledger_entry(p, ledger, len(self.retired), self.uncovered)}

    def _observe(self, msg: Message) -> None:
        node = msg.metadata.src_node_id
        if msg.has_error():
            if protocol.EXHAUSTED in (msg.error.reason or ""):
                self._retire(node)
            return
        metrics = next(iter(msg.content.metric_records.values()), {})
        if protocol.EPSILON not in metrics:
            return
        self.clients[node] = {k: metrics[k] for k in protocol.DP_REPORT}
        target = self.privacy.target_epsilon
        if target is not None and metrics[protocol.EPSILON_NEXT] > target:
            self._retire(node)

    def _retire(self, node: int) -> None:
        self.retired.add(node)
        if hasattr(self.grid, "retire"):
            self.grid.retire(node)


class DPSGD(PrivacyFeature, StackedTrainingFeature):
    name, mode, settings = "dp-sgd", "dp-sgd", DPSGDSettings

    def check(self, scenario, data, model: nn.Module) -> nn.Module:
        s = scenario.strategy
        mu = s.params.get("proximal_mu", scenario.client.proximal_mu) if s.name == "fedprox" else \
            scenario.client.proximal_mu
        check_local_training(dataclasses.replace(scenario.client.local(), proximal_mu=mu))
        model = private_model(model, scenario.privacy.fix_model)
        if scenario.privacy.noise_multiplier is None:
            self._check_target(scenario, data)
        return model

    def _check_target(self, scenario, data) -> None:
        """A target epsilon no noise reaches for some client size is refused before training."""
        p, local = scenario.privacy, scenario.client.local()
        for n in sorted({int(n) for n in data.label_counts().sum(axis=1)}):
            q, steps = round_plan(n, local)
            try:  # cached: the clients of this size reuse the search in this process
                noise_multiplier(p.target_epsilon, q, steps * max(1, planned_rounds(scenario)), p.delta, p.accountant)
            except FedsimError as exc:
                raise ScenarioError("privacy.target_epsilon", f"{p.target_epsilon} cannot be met by a client of {n} "
                                    f"examples ({steps} steps a round for {planned_rounds(scenario)} rounds at "
                                    f"q = {q:.3g}): {exc.what}", exc.fix) from None

    def train_config(self, scenario) -> dict:
        p = scenario.privacy
        sent = DPSGDSettings(delta=p.delta, accountant=p.accountant, max_grad_norm=p.max_grad_norm,
                             planned_rounds=planned_rounds(scenario), noise_multiplier=p.noise_multiplier,
                             target_epsilon=p.target_epsilon)
        return {**super().train_config(scenario), **sent.to_config()}

    def callbacks(self, scenario, grid, needed: int) -> list[RoundCallback]:
        return [DPSGDLedger(scenario.privacy, grid, needed, uncovered(scenario))]

    def client_spec(self, scenario) -> dict:
        return {"fix_model": scenario.privacy.fix_model}

    def client_model(self, model: nn.Module, spec: dict) -> nn.Module:
        return private_model(model, bool(spec["fix_model"]))

    def train(self, settings: DPSGDSettings, setup: RoundSetup, job: ClientJob) -> dict[str, float]:
        sigma = client_noise(job.state, len(job.x), setup.local, settings)
        metrics, history = train_dp_sgd(setup.model, job.x, job.y, setup.local, setup.task, job.seed, sigma, settings,
                                        load_history(job.state))
        save_history(job.state, history, sigma)
        return metrics

    def train_together(self, settings: DPSGDSettings, setup: RoundSetup, jobs: list[ClientJob]
                       ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, float]]]:
        """Noise, budget check and accountant as `train` has them per client; each client's history is written only
        once every client has trained (a cohort that raises is rerun one by one)."""
        local = setup.local
        check_local_training(local)
        if any(len(job.x) == 0 for job in jobs):  # Opacus refuses an empty dataset: one by one, its error says so
            raise ValueError("a client without examples")
        plans = []
        for job in jobs:
            sigma, history = client_noise(job.state, len(job.x), local, settings), load_history(job.state)
            q, steps = round_plan(len(job.x), local)
            plans.append((sigma, history, q, steps, check_budget(history, sigma, q, steps, settings)))
        private = [PrivateClient(job.x, job.y, torch.Generator().manual_seed(job.seed), steps // local.local_epochs,
                                 sigma, augmentation_generator(job.seed))
                   for job, (sigma, _, _, steps, _) in zip(jobs, plans)]
        results = train_stacked_dp_sgd(setup.model, private, local, setup.task, settings.max_grad_norm,
                                       setup.memory_mb)
        metrics = []
        for job, stats, (sigma, history, q, steps, spent) in zip(jobs, results.stats, plans):
            after = accountant_history(history, sigma, q, steps, settings.accountant)
            save_history(job.state, after, sigma)
            metrics.append(round_metrics(stats, spent, after, sigma, q, steps, settings))
        return results.parts, metrics


FEATURE = DPSGD()
