"""Plots a person would rather look at: metrics per round, and per-client label distributions."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from fedsim.data import FederatedData
    from fedsim.results import RunResult


def save_figure(fig, out: Path, tight_layout: bool = True, **savefig) -> Path:
    """Write `fig` to `out` (creating its folder) at 120 dpi and free it."""
    if tight_layout:
        fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, **savefig)
    plt.close(fig)
    return out


def plot_run(result: RunResult) -> Path:
    """RUN_DIR/plots/metrics.png: `run_figure`."""
    return save_figure(run_figure(result), result.run_dir / "plots" / "metrics.png")


def png_data_uri(fig) -> str:
    """`fig` as an embeddable data: URI (PNG, 100 dpi), freed afterwards."""
    import base64
    import io

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def run_figure(result: RunResult):
    """Central accuracy (or mse) and train/test loss per round; epsilon spent on DP runs, unlearning requests
    marked."""
    rows = result.metrics
    rounds = [r["round"] for r in rows]
    key = "mse" if result.summary.get("task") == "regression" else "accuracy"
    fig, (ax_main, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_main.plot(rounds, [r["eval"][key] for r in rows], marker=".", label="central test")
    ax_main.set(xlabel="round", ylabel=key, title=f"{result.scenario.run.name}: test {key}")
    ax_loss.plot(rounds, [r["eval"]["loss"] for r in rows], marker=".", label="central test")
    if rows and "loss" in rows[0]["train"]:
        ax_loss.plot(rounds, [r["train"].get("loss") for r in rows], marker=".", label="clients, local training")
    ax_loss.set(xlabel="round", ylabel="loss", title="loss")
    for request in result.scenario.unlearning.requests if result.scenario.unlearning else []:
        for ax in (ax_main, ax_loss):  # served after its round: the next round is the first without the data
            ax.axvline(request.at_round + 0.5, color="grey", linestyle="--", linewidth=1,
                       label=f"unlearning {request.kind} {request.fraction or request.target}")
    for ax in (ax_main, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ledger = next((key for key in ("privacy", "label_privacy") if rows and key in rows[-1]), None)
    if ledger is not None:  # the budget spent so far, on the right axis
        spent = ax_main.twinx()
        spent.plot(rounds, [r.get(ledger, {}).get("epsilon") for r in rows], color="tab:red", linestyle=":",
                   label="epsilon")
        spent.set_ylabel("epsilon spent", color="tab:red")
        ax_main.set_title(f"{ax_main.get_title()} (final epsilon {rows[-1][ledger]['epsilon']:.2f})")
    return fig


HEATMAP_MAX_CLIENTS = 100  # beyond this a per-client heatmap is unreadable: summarise instead


def plot_partitions(data: FederatedData, out: Path, title: str) -> Path:
    """`partitions_figure`, written to `out`."""
    return save_figure(partitions_figure(data, title), out, tight_layout=data.num_partitions > HEATMAP_MAX_CLIENTS,
                       bbox_inches="tight")


def partitions_figure(data: FederatedData, title: str):
    """Heatmap of examples per (client, class) via flwr-datasets (partition sizes for regression); with more
    than HEATMAP_MAX_CLIENTS clients, a summary: the distribution of client sizes and of label skew."""
    if data.num_partitions > HEATMAP_MAX_CLIENTS:
        return _partition_summary(data, title)
    if data.info.task == "classification":
        from flwr_datasets.visualization import plot_label_distributions

        with warnings.catch_warnings():  # labels are plain ints, so flwr-datasets warns about names
            warnings.simplefilter("ignore", UserWarning)
            fig, ax, _ = plot_label_distributions(
                data.partitioner, label_name="label", plot_type="heatmap", size_unit="absolute",
                partition_id_axis="y", title=title, plot_kwargs={"annot": data.num_partitions <= 30},
            )
        ax.set_xlabel("class")
    else:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(range(data.num_partitions), data.label_counts()[:, 0])
        ax.set(xlabel="partition", ylabel="examples", title=title)
    return fig


def _partition_summary(data: FederatedData, title: str):
    """Many clients: histograms of examples per client and (classification) of the largest class's share of a
    client's examples (1 / classes for IID data, 1 for single-class clients), plus each class's share."""
    import numpy as np

    counts = data.label_counts()
    sizes = counts.sum(axis=1)
    panels = 3 if data.info.task == "classification" else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    axes[0][0].hist(sizes, bins=min(50, max(5, len(np.unique(sizes)))))
    axes[0][0].set(xlabel="examples per client", ylabel="clients",
                   title=f"sizes: median {np.median(sizes):g}, min {sizes.min()}, max {sizes.max()}")
    if panels == 3:
        share = counts.max(axis=1) / np.maximum(sizes, 1)
        axes[0][1].hist(share[sizes > 0], bins=20, range=(0, 1))
        axes[0][1].axvline(1 / counts.shape[1], color="grey", linestyle="--", label="IID")
        axes[0][1].set(xlabel="largest class's share of a client's examples", ylabel="clients", title="label skew")
        axes[0][1].legend(fontsize=8)
        axes[0][2].bar(range(counts.shape[1]), counts.sum(axis=0))
        axes[0][2].set(xlabel="class", ylabel="examples", title="examples per class, all clients")
    fig.suptitle(f"{title} ({data.num_partitions} clients)")
    return fig
