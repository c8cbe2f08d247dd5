"""DP-SGD local training through Opacus: Poisson-sampled batches, per-example clipping, Gaussian noise.

The client's accountant history (Opacus's list of (noise multiplier, sample rate, steps)) lives in
`context.state`, so epsilon composes over every round the client took part in. Randomness (batch sampling and
noise) is drawn from torch's generator seeded per (seed, round, client), so runs are reproducible.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsim import protocol
from fedsim.errors import FedsimError
from fedsim.evaluation import task_loss
from fedsim.privacy import History, epsilon_of, noise_multiplier
from fedsim.protocol import DPSGDSettings, LocalTraining
from fedsim.training import Stats, Step, make_optimizer, train_loop

STATE_KEY = "dp-sgd"


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
                              "set privacy.fix_model = true (Opacus swaps it) or model.batch_norm = false")


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

        def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
            xb, yb = batch
            outputs = private(xb)
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
