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
    """RUN_DIR/plots/metrics.png: central accuracy (or mse) and train/test loss per round."""
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
                       label=f"unlearning {request.kind} {request.target}")
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
    return save_figure(fig, result.run_dir / "plots" / "metrics.png")


def plot_partitions(data: FederatedData, out: Path, title: str) -> Path:
    """Heatmap of examples per (client, class) via flwr-datasets; partition sizes for regression."""
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
    return save_figure(fig, out, tight_layout=False, bbox_inches="tight")
