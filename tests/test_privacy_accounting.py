"""fedsim's epsilons (Opacus accountants) against an independent library, dp-accounting."""

from __future__ import annotations

import json

import dp_accounting
import pytest

from fedsim.errors import FedsimError
from fedsim.privacy import epsilon, epsilon_of, noise_multiplier

# docs/algorithms.md's table (Differential privacy), and two settings of our own
SETTINGS = [(256 / 60000, 1.1, 14062), (0.01, 1.0, 1000), (1.0, 5.0, 50), (0.05, 0.8, 300), (0.002, 2.0, 20000)]


def dp_accounting_epsilon(q: float, sigma: float, steps: int, delta: float, kind: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    accountant = dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()
    accountant.compose(event)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("q,sigma,steps", SETTINGS)
def test_rdp_matches_dp_accounting(q, sigma, steps):
    ours, theirs = epsilon(sigma, q, steps, 1e-5, "rdp"), dp_accounting_epsilon(q, sigma, steps, 1e-5, "rdp")
    assert abs(ours - theirs) / theirs <= 0.005, (ours, theirs)


@pytest.mark.parametrize("q,sigma,steps", SETTINGS)
def test_prv_matches_dp_accounting_pld(q, sigma, steps):
    ours, theirs = epsilon(sigma, q, steps, 1e-5, "prv"), dp_accounting_epsilon(q, sigma, steps, 1e-5, "pld")
    assert abs(ours - theirs) / theirs <= 0.03, (ours, theirs)


def test_reference_table_values():
    assert epsilon(1.1, 256 / 60000, 14062, 1e-5) == pytest.approx(2.597, abs=0.002)
    assert epsilon(1.0, 0.01, 1000, 1e-5) == pytest.approx(2.101, abs=0.002)
    assert epsilon(5.0, 1.0, 50, 1e-5) == pytest.approx(7.077, abs=0.002)


def test_composition_and_noise_search():
    split = epsilon_of([(1.0, 0.01, 400), (1.0, 0.01, 600)], 1e-5)
    assert split == pytest.approx(epsilon(1.0, 0.01, 1000, 1e-5), rel=1e-9)
    sigma = noise_multiplier(2.0, 0.01, 1000, 1e-5)
    assert epsilon(sigma, 0.01, 1000, 1e-5) <= 2.0 < epsilon(sigma * 0.97, 0.01, 1000, 1e-5)


@pytest.mark.parametrize("kwargs,field", [
    ({"noise_multiplier": 0.0}, "noise_multiplier"), ({"sample_rate": 1.5}, "sample_rate"),
    ({"sample_rate": 0.0}, "sample_rate"), ({"delta": 1.0}, "delta"), ({"delta": 0.0}, "delta"),
])
def test_bad_values(kwargs, field):
    args = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100, "delta": 1e-5} | kwargs
    with pytest.raises(FedsimError, match=field):
        epsilon(**args)
    with pytest.raises(FedsimError, match="epsilon: must be > 0"):
        noise_multiplier(-1.0, 0.01, 100, 1e-5)


def test_cli(cli):
    code, out, _ = cli("privacy", "epsilon", "--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "1000",
                       "--delta", "1e-5")
    assert code == 0 and float(out.strip()) == pytest.approx(2.101, abs=0.002) and out.count("\n") == 1
    code, out, _ = cli("privacy", "epsilon", "--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "1000",
                       "--delta", "1e-5", "--accountant", "prv", "--json")
    fields = json.loads(out)
    assert code == 0 and fields["accountant"] == "prv" and fields["steps"] == 1000 and 1.7 < fields["epsilon"] < 1.95
    code, out, _ = cli("privacy", "noise", "--target-epsilon", "2.101", "--sample-rate", "0.01", "--steps", "1000",
                       "--delta", "1e-5")
    assert code == 0 and float(out.strip()) == pytest.approx(1.0, abs=0.02)
    code, _, err = cli("privacy", "epsilon", "--noise-multiplier", "1.0", "--sample-rate", "2", "--steps", "10",
                       "--delta", "1e-5")
    assert code == 2 and err.startswith("error: sample_rate: must be in (0, 1]")


# (q, sigma, steps, delta): the shipped dp-sgd setting's scale, a small cohort, many steps, a loose delta
BOUND_SETTINGS = [(0.05, 0.8, 40, 1e-5), (1 / 14, 0.9, 280, 1e-5), (0.01, 1.0, 1000, 1e-3), (0.3, 2.0, 30, 1e-6)]


@pytest.mark.parametrize("q,sigma,steps,delta", BOUND_SETTINGS)
def test_budget_accountants_bound_the_true_epsilon(q, sigma, steps, delta):
    """RDP and PRV never report less than dp-accounting's PLD (a tight numerical epsilon): they can hold a budget."""
    pld = dp_accounting_epsilon(q, sigma, steps, delta, "pld")
    assert epsilon(sigma, q, steps, delta, "rdp") >= pld
    assert epsilon(sigma, q, steps, delta, "prv") >= pld * 0.995  # PRV's upper bound, up to discretisation


def test_gdp_can_underestimate_so_it_cannot_hold_a_budget(cli, tmp_path):
    from opacus.accountants.utils import get_noise_multiplier

    gdp_sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=0.05, steps=40,
                                     accountant="gdp")
    assert dp_accounting_epsilon(0.05, gdp_sigma, 40, 1e-5, "pld") > 3.0  # the audit's figure: ~3.2 for a target of 2
    rdp_sigma = noise_multiplier(2.0, 0.05, 40, 1e-5, "rdp")
    assert dp_accounting_epsilon(0.05, rdp_sigma, 40, 1e-5, "pld") <= 2.0
    with pytest.raises(FedsimError, match="accountant: 'gdp' is a central-limit estimate"):
        noise_multiplier(2.0, 0.05, 40, 1e-5, "gdp")
    code, _, err = cli("privacy", "noise", "--target-epsilon", "2", "--sample-rate", "0.05", "--steps", "40",
                       "--delta", "1e-5", "--accountant", "gdp")
    assert code == 2 and "not an upper bound" in err and len(err.strip().splitlines()) == 1
    path = tmp_path / "gdp.toml"
    path.write_text('[privacy]\nmode = "dp-sgd"\ntarget_epsilon = 8.0\naccountant = "gdp"\n')
    code, _, err = cli("validate", str(path))
    assert code == 2 and "privacy: 'gdp' is a central-limit estimate of epsilon, not an upper bound" in err
    path.write_text('[privacy]\nmode = "dp-sgd"\nnoise_multiplier = 1.0\naccountant = "gdp"\n')
    assert cli("validate", str(path))[0] == 0  # given noise, GDP still reports its estimate
    assert 0 < epsilon(1.0, 0.05, 40, 1e-5, "gdp")
