"""Plots a person would rather look at: metrics per round, and per-client label distributions."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedsim.data import FederatedData
from fedsim.results import RunResult


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
    for ax in (ax_main, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = result.run_dir / "plots" / "metrics.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_partitions(data: FederatedData, out: Path, title: str) -> Path:
    """Heatmap of examples per (client, class) via flwr-datasets; partition sizes for regression."""
    out.parent.mkdir(parents=True, exist_ok=True)
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
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
