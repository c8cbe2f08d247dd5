"""Learning from aggregate responses (ICLR 2024), the mechanism and the theory: random bags, the Laplace label-DP
release, the interpolating linear estimator in closed form and its predicted risk (docs/algorithms.md, Learning
from aggregate responses). The client's training on bags is fedsim.features.bags.

A client's n examples are split at random into m = n // k disjoint bags of size k; the n - m k left over are
dropped (they would make a smaller, differently-noised bag). The learner sees every feature but only each bag's
mean response (regression) or label proportions (classification).

Label-DP: responses are clipped to [-B, B] with B = clip * sqrt(log n) (the paper's bound for sub-Gaussian
responses; `clip` is in response units, so 1 suits standardised targets), averaged per bag, and released once with
Laplace noise. Replacing one response moves one bag mean by at most 2B/k, so scale 2B/(k epsilon) gives
epsilon-label-DP under replace-one adjacency (the paper prints B/(k epsilon), the add/remove-style bound); for
proportions one changed label moves the vector by 2/k in L1, so scale 2/(k epsilon) per class. Training on the
release is post-processing: epsilon does not grow with rounds or epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def make_bags(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(m, k) example indices: random disjoint bags of size k (n - m k examples left out), in canonical order."""
    if k < 1 or n < k:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    m = n // k
    bags = np.sort(rng.permutation(n)[: m * k].reshape(m, k), axis=1)
    return bags[np.argsort(bags[:, 0])]  # a bag set has no order: sort it (for k = 1 this is the identity)


def clip_bound(n: int, clip: float) -> float:
    """B = clip * sqrt(log n) (at least clip)."""
    return clip * math.sqrt(max(math.log(n), 1.0))


def bag_targets(y: np.ndarray, bags: np.ndarray, num_classes: int) -> np.ndarray:
    """Per bag: the mean response (regression, num_classes == 0) or the label proportions (m, num_classes)."""
    if num_classes:
        return np.eye(num_classes)[y[bags]].mean(axis=1)
    return y[bags].mean(axis=1)


def release(y: np.ndarray, bags: np.ndarray, num_classes: int, epsilon: float | None, clip: float,
            rng: np.random.Generator) -> np.ndarray:
    """The released bag targets: clipped (regression), averaged, plus Laplace noise when `epsilon` is given."""
    k = bags.shape[1]
    if num_classes:
        targets, scale = bag_targets(y, bags, num_classes), (2.0 / (k * epsilon) if epsilon else 0.0)
    else:
        bound = clip_bound(len(y), clip)
        targets = bag_targets(np.clip(y, -bound, bound), bags, 0)
        scale = 2.0 * bound / (k * epsilon) if epsilon else 0.0
    if scale:
        targets = targets + rng.laplace(0.0, scale, targets.shape)
    return targets.astype(np.float32)


# ---- the linear model in closed form, and what theory predicts ------------------------------------------------
def interpolating_linear_estimator(x: np.ndarray, y_bar: np.ndarray, bags: np.ndarray, rho: float) -> np.ndarray:
    """theta_rho = (k Xbar^T Xbar + rho Xc^T Xc)^-1 k Xbar^T ybar (Xbar: bag-mean features, Xc: within-bag centred)."""
    k = bags.shape[1]
    grouped = x[bags]  # (m, k, d)
    x_bar = grouped.mean(axis=1)
    x_c = (grouped - x_bar[:, None, :]).reshape(-1, x.shape[1])
    gram = k * x_bar.T @ x_bar + rho * x_c.T @ x_c
    return np.linalg.solve(gram, k * x_bar.T @ y_bar)


@dataclass(frozen=True)
class RiskTerms:
    """The parts of the predicted E|theta_rho - theta|^2."""

    bias: float  # squared bias: theta shrunk by m / M
    noise: float  # variance from the responses' noise and the Laplace release
    design: float  # variance from the random features of the other examples in a bag (0 at theta = 0 or rho = 0)

    @property
    def total(self) -> float:
        return self.bias + self.noise + self.design


def risk_terms(n: int, d: int, k: int, rho: float, epsilon: float | None = None, snr: float = 1.0, clip: float = 1.0,
               noise_var: float = 1.0, client_sizes: Sequence[int] | None = None) -> RiskTerms | None:
    """The predicted risk's parts for x ~ N(0, I_d), noise variance `noise_var`, |theta|^2 = snr * noise_var
    (None where the Gram matrix is too small to invert).

    m bags of k (n // k; with `client_sizes`, each client bags its own examples: sum of n_c // k) hold N = m k
    examples; M = m + rho (N - m) is the expected rho-weighted Gram matrix's scale (k Xbar^T Xbar ~ Wishart(m),
    Xc^T Xc ~ Wishart(N - m), independent). To first order in 1 / M:
    - bias: the estimator's mean is theta m / M, so (1 - m / M)^2 |theta|^2;
    - noise: v k m d / (M (M - d - 1)), with v = noise_var / k + 2 b^2 the variance of a released bag mean (b the
      Laplace scale; with `client_sizes`, each client's clip bound from its own n_c, b^2 averaged over the bags);
    - design: (d + 1) |theta|^2 rho^2 m (N - m) N / M^4, the spread of rho ((N - m) dA - m dB) theta / M^2 around
      the mean (dA, dB the two Wishart parts' deviations from m I and (N - m) I, of variances m (d + 1) |theta|^2
      and (N - m) (d + 1) |theta|^2 along theta), which the corollaries leave out; at rho = 1 (M = N) it is
      (d + 1) |theta|^2 m (N - m) / N^3.
    rho = 0 gives noise_var d / (m - d - 1) without label noise, rho = 1 noise_var / (k (psi - 1)) at theta = 0:
    the paper's corollaries. Clipping is assumed not to bind.
    """
    sizes = list(client_sizes) if client_sizes is not None else [n]
    bags_per_client = [size // k for size in sizes]
    m = sum(bags_per_client)
    if m == 0:
        return None
    big_n = m * k
    big_m = m + rho * (big_n - m)
    if big_m - d - 1 <= 0:
        return None
    laplace_var = 0.0
    if epsilon:
        laplace_var = sum(bags * 2.0 * (2.0 * clip_bound(size, clip) / (k * epsilon)) ** 2
                          for size, bags in zip(sizes, bags_per_client, strict=True)) / m
    theta_sq = snr * noise_var
    return RiskTerms(bias=(1.0 - m / big_m) ** 2 * theta_sq,
                     noise=(noise_var / k + laplace_var) * k * m * d / (big_m * (big_m - d - 1)),
                     design=(d + 1) * theta_sq * rho**2 * m * (big_n - m) * big_n / big_m**4)


def predicted_risk(n: int, d: int, k: int, rho: float, epsilon: float | None = None, snr: float = 1.0,
                   clip: float = 1.0, noise_var: float = 1.0, client_sizes: Sequence[int] | None = None) -> float:
    """Predicted E|theta_rho - theta|^2 (`risk_terms`, summed; inf where the Gram matrix is too small)."""
    terms = risk_terms(n, d, k, rho, epsilon, snr, clip, noise_var, client_sizes)
    return math.inf if terms is None else terms.total


def optimal_bag_size(n: int, d: int, epsilon: float | None, rho: float, snr: float = 1.0, clip: float = 1.0,
                     max_k: int | None = None) -> tuple[int, dict[int, float]]:
    """The bag size k minimising predicted risk, and the predicted risk for every k tried (1 .. max_k)."""
    limit = max_k or max(1, n // (d + 2))
    risks = {k: predicted_risk(n, d, k, rho, epsilon, snr, clip) for k in range(1, limit + 1)}
    best = min(risks, key=lambda k: (risks[k], k))
    return best, risks
