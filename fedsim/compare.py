"""Comparing runs: group run dirs by run name (seeds of one setting), summarise as mean ± std, overlay plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError
from fedsim.results import RunResult, load_run
from fedsim.sweep import first_difference


@dataclass
class Group:
    """The seeds of one setting (runs sharing a run name)."""

    name: str
    runs: list[RunResult]

    @property
    def key(self) -> str:
        return "mse" if self.runs[0].summary.get("task") == "regression" else "accuracy"

    def curves(self) -> np.ndarray:
        """(seeds, rounds) central metric per round; runs cut to the shortest."""
        rows = min(len(r.metrics) for r in self.runs)
        return np.array([[row["eval"][self.key] for row in r.metrics[:rows]] for r in self.runs])

    def rounds_to(self, target: float) -> list[int | None]:
        """Per seed, the first round reaching `target` (accuracy >= target, or mse <= target)."""
        out = []
        for curve in self.curves():
            hit = np.flatnonzero(curve >= target if self.key == "accuracy" else curve <= target)
            out.append(int(hit[0]) + 1 if hit.size else None)
        return out


# settings that do not change what a run computes (the seed is the replicate): runs of one set-up may differ in them
NOT_THE_SET_UP = {"run": ("seed", "runtime", "ray_address", "ray_connect_timeout_s", "resources", "checkpoint_every"),
                  "output": ("dir", "save_model", "trackers", "mlflow_uri")}


def _set_up(run: RunResult) -> dict:
    settings = run.scenario.to_dict()
    for section, keys in NOT_THE_SET_UP.items():
        for key in keys:
            settings.get(section, {}).pop(key, None)
    return settings


def load_groups(run_dirs: list[Path]) -> list[Group]:
    """The runs grouped by run name; runs of different tasks (classification / regression) are refused."""
    groups: dict[str, list[RunResult]] = {}
    tasks: dict[str, str] = {}
    for run_dir in run_dirs:
        result = load_run(run_dir)
        groups.setdefault(result.scenario.run.name, []).append(result)
        tasks.setdefault(result.summary.get("task", "classification"), str(run_dir))
    if len(tasks) > 1:
        raise FedsimError("fedsim compare", "mixes " + " and ".join(f"{task} runs (e.g. {where})"
                                                                   for task, where in sorted(tasks.items())),
                          "compare runs of one task: their metrics (accuracy vs mse) do not share a scale")
    for name, runs in groups.items():
        first = _set_up(runs[0])
        for other in runs[1:]:
            found = first_difference(first, _set_up(other))
            if found is not None:
                key, a, b = found
                raise FedsimError("fedsim compare", f"the runs named '{name}' differ in {key} beyond their seed "
                                  f"({a!r} in {runs[0].run_dir}, {b!r} in {other.run_dir}), so their mean would "
                                  "mix two set-ups", "compare the runs of one set-up, or give the set-ups "
                                  "different run names")
    return [Group(name, runs) for name, runs in sorted(groups.items())]


def mean_std(values: list[float], digits: int = 4) -> str:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if np.isnan(arr).all():
        return "n/a"
    spread = np.nanstd(arr, ddof=1) if np.count_nonzero(~np.isnan(arr)) > 1 else 0.0
    return f"{np.nanmean(arr):.{digits}f} ± {spread:.{digits}f}"


UNLEARNING_COLUMNS = {
    "classification": [("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia", "MIA"), ("avg_gap", "Gap")],
    "regression": [("forgotten_l1", "forgotten L1"), ("retained_l1", "retained L1"), ("test_l1", "test L1"),
                   ("mia", "MIA"), ("ain", "AIN"), ("avg_gap", "Gap")],
}


def _unlearning_cells(groups: list[Group]) -> tuple[str, dict[tuple[str, str, str], list[dict]]]:
    """The task and {(setting, request, method): that row from every seed}."""
    cells: dict[tuple[str, str, str], list[dict]] = {}
    task = "classification"
    for group in groups:
        for run in group.runs:
            task = run.summary.get("task", task)
            for row in run.summary.get("unlearning", []):
                request = row["request"]
                described = f"{request['kind']} {request['target']} @ {request['at_round']}"
                cells.setdefault((group.name, described, row["method"]), []).append(row)
    return task, cells


def unlearning_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """One row per (setting, request, method): the SalUn-protocol metrics, time and speed-up over retrain,
    as mean ± std over seeds; empty when no run served unlearning requests."""
    task, cells = _unlearning_cells(groups)
    if not cells:
        return [], []
    columns = UNLEARNING_COLUMNS[task]
    header = ["setting", "request", "method", "seeds", *[title for _, title in columns], "time s", "rounds",
              "speed-up"]
    rows = []
    digits = 2 if task == "classification" else 4
    for (name, request, method), found in cells.items():
        def cell(key: str, places: int = digits, found=found) -> str:
            text = mean_std([r[key] for r in found], places)
            return text.split(" ± ")[0] if len(found) == 1 else text  # one seed: no spread to show

        rows.append([name, request, method, str(len(found)), *[cell(k) for k, _ in columns], cell("time_s", 3),
                     f"{np.mean([r['rounds'] for r in found]):g}", cell("speedup", 1)])
    return header, rows


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (m - i), made monotone."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [1.0] * len(p_values), 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, p_values[index] * (len(p_values) - i)))
        adjusted[index] = running
    return adjusted


def compared_with_best(gaps: dict[str, dict[int, float]], min_seeds: int = 3
                       ) -> tuple[str, list[tuple[str, float, int]], int]:
    """The method with the lowest mean gap; for every other method, its Holm-adjusted p-value against it and the
    seeds the two share; and how many pairs were tested. Every pair of methods is tested (a two-sided paired t-test
    over shared seeds) and Holm corrects over all of them: the best is picked from the same data, so testing only
    against it would not hold the family-wise level (its comparisons lean towards "larger"). Pairs with fewer than
    `min_seeds` shared seeds are not tested."""
    from scipy.stats import ttest_rel

    best = min(gaps, key=lambda m: np.mean(list(gaps[m].values())))
    methods = sorted(gaps)
    by_seeds: dict[tuple[int, ...], list[tuple[str, str]]] = {}  # pairs sharing one set of seeds: one call
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            seeds = tuple(sorted(set(gaps[a]) & set(gaps[b])))
            if len(seeds) >= min_seeds:
                by_seeds.setdefault(seeds, []).append((a, b))
    tested: dict[tuple[str, str], tuple[float, int]] = {}
    for seeds, pairs in by_seeds.items():
        x, y = (np.array([[gaps[pair[side]][s] for s in seeds] for pair in pairs]) for side in (0, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            p_values = np.atleast_1d(ttest_rel(x, y, axis=1).pvalue)
        for pair, p, same in zip(pairs, p_values, (x == y).all(axis=1), strict=True):
            tested[pair] = (1.0 if same else float(p)), len(seeds)
    adjusted = dict(zip(tested, holm([p for p, _ in tested.values()]), strict=True))
    against = []
    for method in methods:
        pair = tuple(sorted((method, best)))
        if method != best and pair in tested:
            against.append((method, adjusted[pair], tested[pair][1]))
    return best, sorted(against, key=lambda found: found[1]), len(tested)


def gap_significance(groups: list[Group], alpha: float = 0.05) -> list[str]:
    """Per (setting, request) served with several seeds: which methods' Avg. Gap is larger than the lowest one's,
    by paired t-tests over the seeds (paired: same data, same model before the request) between every two methods,
    Holm-corrected over all pairs (compared_with_best). One line of text per request."""
    gaps: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for group in groups:
        for run in group.runs:
            for row in run.summary.get("unlearning", []):
                if row["method"] == "retrain":
                    continue
                request = row["request"]
                described = f"{request['kind']} {request['target']} @ {request['at_round']}"
                gaps.setdefault((group.name, described), {}).setdefault(row["method"], {})[run.scenario.run.seed] = \
                    row["avg_gap"]
    lines = []
    for (name, request), methods in gaps.items():
        best, against, pairs = compared_with_best(methods)
        if not against:
            continue
        larger = [f"{m} (p={a:.3f})" for m, a, _ in against if a < alpha]
        tied = [f"{m} (p={a:.3f})" for m, a, _ in against if a >= alpha]
        seeds = max(n for _, _, n in against)
        lines.append(f"{name}, {request}: lowest Avg. Gap {best} "
                     f"({np.mean(list(methods[best].values())):.4g}); paired t-tests over {seeds} seeds between "
                     f"every two methods, Holm-adjusted over the {pairs} pairs at {alpha:g}: significantly larger: "
                     f"{', '.join(larger) or 'none'}; not distinguishable: {', '.join(tied) or 'none'}")
    return lines


def plot_unlearning(groups: list[Group], out: Path) -> Path | None:
    """Avg. Gap to retrain against speed-up over retrain, one point per method (mean ± std over seeds);
    None when no run served unlearning requests."""
    _, cells = _unlearning_cells(groups)
    cells = {key: rows for key, rows in cells.items() if key[2] != "retrain"}
    if not cells:
        return None
    from fedsim.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(8, 5))
    several = len({(name, request) for name, request, _ in cells}) > 1
    for (name, request, method), rows in cells.items():
        speed, gap = np.array([r["speedup"] for r in rows]), np.array([r["avg_gap"] for r in rows])
        ax.errorbar(speed.mean(), gap.mean(), xerr=speed.std(), yerr=gap.std(), fmt="o", capsize=3)
        ax.annotate(f"{method} ({name}, {request})" if several else method, (speed.mean(), gap.mean()),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="speed-up over retrain (log)", ylabel="Avg. Gap to retrain (lower is better)",
           title="unlearning: closeness to retrain vs cost (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    save_figure(fig, out)
    return out


def summary_rows(groups: list[Group], target: float | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows: setting, seeds, final and best metric (mean ± std), rounds to target."""
    key = groups[0].key
    header = ["setting", "seeds", f"final {key}", f"best {key}"]
    if target is not None:
        header.append(f"rounds to {target:g}")
    private = all("privacy" in r.summary for g in groups for r in g.runs)
    if private:
        header.append("final epsilon")
    rows = []
    for group in groups:
        curves = group.curves()
        best = curves.max(axis=1) if key == "accuracy" else curves.min(axis=1)
        row = [group.name, str(len(group.runs)), mean_std(curves[:, -1]), mean_std(best)]
        if target is not None:
            hits = group.rounds_to(target)
            reached = [h for h in hits if h is not None]
            row.append(f"{np.mean(reached):.1f} ({len(reached)}/{len(hits)} seeds)" if reached else "never")
        if private:
            row.append(mean_std([r.summary["privacy"]["epsilon"] for r in group.runs]))
        rows.append(row)
    return header, rows


FACET_AFTER = 8  # settings per panel: more than this are split over several panels


def plot_groups(groups: list[Group], out: Path) -> Path:
    """`groups_figure`, written to `out`."""
    from fedsim.plots import save_figure

    save_figure(groups_figure(groups), out)
    return out


def groups_figure(groups: list[Group]):
    """Mean central metric per round for each setting, with a ± std band over seeds; each setting its own colour
    and line style, integer round ticks, and more than FACET_AFTER settings split into panels of at most that
    many (sharing the y axis)."""
    import math

    from fedsim.plots import plt

    panels = math.ceil(len(groups) / FACET_AFTER)
    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(11 if columns == 1 else 14, 5 * rows), squeeze=False,
                             sharey=True)
    colours, styles = plt.get_cmap("tab10"), ["-", "--", "-.", ":"]
    for index, group in enumerate(groups):
        ax = axes.flat[index // FACET_AFTER]
        curves = group.curves()
        rounds = np.arange(1, curves.shape[1] + 1)
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        colour = colours(index % 10)
        ax.plot(rounds, mean, color=colour, linestyle=styles[(index // 10) % len(styles)],
                label=f"{group.name} (n={len(group.runs)})")
        ax.fill_between(rounds, mean - std, mean + std, color=colour, alpha=0.12)
    for ax in axes.flat[:panels]:
        ax.set(xlabel="round", ylabel=f"test {groups[0].key}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left" if columns == 1 else "best",
                  bbox_to_anchor=(1.01, 0.5) if columns == 1 else None)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    fig.suptitle("comparison (mean ± std over seeds)")
    return fig


def plot_privacy_utility(groups: list[Group], out: Path) -> Path | None:
    """Final metric vs final epsilon per setting (mean ± std over seeds); None when the runs were not private."""
    points = []
    for group in groups:
        eps = [r.summary.get("privacy", {}).get("epsilon") for r in group.runs]
        if None in eps:
            return None
        points.append((group.name, np.mean(eps), group.curves()[:, -1]))
    from fedsim.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, eps, finals in sorted(points, key=lambda p: p[1]):
        ax.errorbar(eps, finals.mean(), yerr=finals.std(), fmt="o", capsize=4, label=name)
    ax.set(xscale="log", xlabel="epsilon (final, max over clients)", ylabel=f"final test {groups[0].key}",
           title="privacy-utility (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, out)
    return out


def field(result: RunResult, dotted: str):
    """A scenario value by dotted key (e.g. 'bags.rho')."""
    node = result.scenario.to_dict()
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _predicted_curve(result: RunResult, rhos: np.ndarray) -> np.ndarray | None:
    """Predicted test mse vs rho for federated linear regression on gaussian-regression bags (the pooled closed
    form over every client's own bags, each client's Laplace scale from its own partition size)."""
    from fedsim.bag_theory import predicted_risk
    from fedsim.data import federated_data

    s = result.scenario
    if s.data.dataset != "gaussian-regression" or s.model.name != "linear" or s.bags is None:
        return None
    g = s.data.generator
    sizes = [int(c) for c in federated_data(s.data, s.run.seed).label_counts()[:, 0]]
    noise = g.noise_std**2
    snr = 1.0 / noise  # theta ~ N(0, I/d): |theta|^2 ~ 1
    return np.array([noise + predicted_risk(sum(sizes), g.n_features, s.bags.k, r, s.bags.epsilon, snr, s.bags.clip,
                                            noise, client_sizes=sizes) for r in rhos])


def plot_against(groups: list[Group], x_key: str, line_keys: list[str], out: Path) -> list[str]:
    """Final metric vs a scenario field (one line per combination of `line_keys`, mean ± std over seeds), written
    to `out`; for aggregate-responses linear regression the predicted test mse is drawn dashed, its optimum
    starred. Returns one line of text per plotted line: its best measured x and the predicted optimum if any."""
    from fedsim.plots import plt, save_figure

    lacking = [g.name for g in groups if any(not isinstance(field(r, x_key), int | float) for r in g.runs)]
    if lacking:
        raise FedsimError("--x", f"'{x_key}' is not a number in every run (not in: {', '.join(lacking[:3])}"
                          f"{', ...' if len(lacking) > 3 else ''})", "pass a numeric scenario field the runs set, "
                          "e.g. --x bags.rho or --x data.partitioner.alpha")
    lines: dict[str, dict[float, list[float]]] = {}
    example: dict[str, RunResult] = {}
    for group in groups:
        for run, final in zip(group.runs, group.curves()[:, -1]):
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={field(run, k)}" for k in line_keys) or "runs"
            lines.setdefault(label, {}).setdefault(float(field(run, x_key)), []).append(float(final))
            example.setdefault(label, run)
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    report: list[str] = []
    for index, (label, points) in enumerate(sorted(lines.items())):
        xs = sorted(points)
        means, stds = [np.mean(points[x]) for x in xs], [np.std(points[x]) for x in xs]
        colour = colours(index % 10)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colour, label=label)
        best = int(np.argmin(means) if groups[0].key == "mse" else np.argmax(means))
        report.append(f"{label}: best measured {x_key} = {xs[best]:g} ({means[best]:.4f})")
        if x_key == "bags.rho":
            grid = np.linspace(0, 1, 101)
            predicted = _predicted_curve(example[label], grid)
            if predicted is not None:
                ax.plot(grid, predicted, "--", color=colour, alpha=0.7)
                best = int(np.argmin(predicted))
                ax.plot(grid[best], predicted[best], "*", color=colour, markersize=14)
                report[-1] += f", predicted optimum {grid[best]:.2f} ({predicted[best]:.4f})"
    ax.set(xlabel=x_key, ylabel=f"final test {groups[0].key}", title=f"final {groups[0].key} vs {x_key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out)
    return report
