"""`fedsim privacy epsilon | noise | bag-size`: the privacy calculator (Opacus accountants, the bag theory)."""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer
from rich.table import Table

from fedsim.cli.common import out_console
from fedsim.errors import FedsimError

privacy_app = typer.Typer(no_args_is_help=True, help="Privacy calculator (Opacus accountants).")


SampleRateOpt = Annotated[float, typer.Option(help="Poisson sampling rate q.")]

StepsOpt = Annotated[int, typer.Option(help="Number of noisy steps composed.")]

DeltaOpt = Annotated[float, typer.Option(help="Target delta.")]

AccountantOpt = Annotated[str, typer.Option(help="rdp | prv | gdp")]

JsonOpt = Annotated[bool, typer.Option("--json", help="All fields as JSON.")]

def _print_ledger(noise: float, sample_rate: float, steps: int, delta: float, accountant: str, as_json: bool,
                  headline: float) -> None:
    from fedsim.privacy import Ledger, epsilon

    ledger = Ledger(epsilon(noise, sample_rate, steps, delta, accountant), delta, accountant, noise, sample_rate, steps)
    print(json.dumps(ledger.to_dict()) if as_json else f"{headline:.6g}")

@privacy_app.command("epsilon")
def privacy_epsilon(noise_multiplier: Annotated[float, typer.Option(help="Gaussian noise std / clipping norm.")],
                    sample_rate: SampleRateOpt, steps: StepsOpt, delta: DeltaOpt, accountant: AccountantOpt = "rdp",
                    json_out: JsonOpt = False) -> None:
    """Epsilon of a subsampled Gaussian mechanism composed over STEPS."""
    from fedsim.privacy import epsilon

    eps = epsilon(noise_multiplier, sample_rate, steps, delta, accountant)
    _print_ledger(noise_multiplier, sample_rate, steps, delta, accountant, json_out, eps)

@privacy_app.command("noise")
def privacy_noise(target_epsilon: Annotated[float, typer.Option(help="The budget.")], sample_rate: SampleRateOpt,
                  steps: StepsOpt, delta: DeltaOpt, accountant: AccountantOpt = "rdp",
                  json_out: JsonOpt = False) -> None:
    """The smallest noise multiplier that keeps epsilon within TARGET_EPSILON."""
    from fedsim.privacy import noise_multiplier

    sigma = noise_multiplier(target_epsilon, sample_rate, steps, delta, accountant)
    _print_ledger(sigma, sample_rate, steps, delta, accountant, json_out, sigma)

@privacy_app.command("bag-size")
def privacy_bag_size(
    n: Annotated[int, typer.Option("--n", help="Examples (responses) to bag.")],
    d: Annotated[int, typer.Option("--d", help="Features.")],
    epsilon: Annotated[float | None, typer.Option(help="Label-DP epsilon of the Laplace release (omit: none).")] = None,
    rho: Annotated[float, typer.Option(help="0 bag-level .. 1 instance-level.")] = 0.0,
    snr: Annotated[float, typer.Option(help="|theta|^2 / noise variance.")] = 1.0,
    clip: Annotated[float, typer.Option(help="Clip constant C (bound C sqrt(log n)).")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """Predicted risk of the interpolating linear estimator for every bag size k, and the best k."""
    from fedsim.bag_theory import optimal_bag_size
    from fedsim.privacy import check

    check("", epsilon=epsilon, sample_rate=None)
    if n < 2 or d < 1 or not 0 <= rho <= 1 or snr < 0 or clip <= 0:
        raise FedsimError("bag-size", f"need n >= 2, d >= 1, 0 <= rho <= 1, snr >= 0, clip > 0 (got n={n}, d={d}, "
                          f"rho={rho}, snr={snr}, clip={clip})", "fix the option")
    best, risks = optimal_bag_size(n, d, epsilon, rho, snr, clip)
    if math.isinf(risks[best]):
        raise FedsimError("bag-size", f"no bag size gives a finite risk: {n} examples cannot fit {d} features "
                          "(the Gram matrix needs more effective examples than d + 1)",
                          f"raise --n above {d + 2} (times k for bag-level), or lower --d")
    if json_out:
        print(json.dumps({"best_k": best, "risk": {str(k): r for k, r in risks.items()}, "n": n, "d": d,
                          "epsilon": epsilon, "rho": rho, "snr": snr, "clip": clip}))
        return
    table = Table(title=f"predicted risk, n={n} d={d} epsilon={epsilon} rho={rho} snr={snr}")
    table.add_column("k", justify="right")
    table.add_column("predicted risk", justify="right")
    shown = sorted({*range(1, min(len(risks), 10) + 1), best, len(risks)})
    for k in shown:
        table.add_row(str(k), f"{risks[k]:.5g}", style="bold" if k == best else None)
    out_console.print(table)
    out_console.print(f"best k: {best}")
