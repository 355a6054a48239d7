"""Training curves: losses, segmentation quality, depth errors and task weights per epoch."""
from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Draw ``curves.png`` from the records of ``metrics.jsonl`` (see :mod:`mtan.train.engine`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_loss, ax_seg), (ax_depth, ax_w) = axes

    for key in history[-1]["train"] if history else []:
        ax_loss.plot(epochs, [r["train"].get(key) for r in history], label=f"train {key[5:]}")
    val_epochs = [r for r in history if r.get("val")]
    for name in (val_epochs[-1]["val"] if val_epochs else {}):
        xs = [r["epoch"] for r in val_epochs]
        metrics = [r["val"].get(name, {}) for r in val_epochs]
        for key in metrics[-1]:
            ys = [m.get(key) for m in metrics]
            if all(y is None for y in ys):
                continue
            label = f"{name} {key}"
            if key.startswith("loss."):
                ax_loss.plot(xs, ys, "--", label=f"val {label}")
            elif key.startswith("semantic."):
                ax_seg.plot(xs, ys, marker=".", label=label)
            elif key in ("depth.abs_err", "depth.rel_err", "normal.mean_deg"):
                ax_depth.plot(xs, ys, marker=".", label=label)
    for task in history[-1]["weights"] if history else []:
        ax_w.plot(epochs, [r["weights"].get(task) for r in history], marker=".", label=task)

    for ax, title in ((ax_loss, "losses"), (ax_seg, "segmentation (higher is better)"),
                      (ax_depth, "depth / normal errors (lower is better)"), (ax_w, "task weights")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    ax_loss.set_yscale("log") if any(l.get_ydata().size for l in ax_loss.lines) else None
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
