"""PNG plots of evaluation results (matplotlib with the Agg backend, imported only when plotting)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pktnin.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_and_close(fig, out_png: str | Path) -> Path:
    """Write the figure as a PNG (atomically) and free it: pyplot keeps every open figure alive."""
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
            os.chmod(tmp, 0o644)
    finally:
        plt.close(fig)
    return out_png


def result_label(result: dict) -> str:
    name = result.get("name") or result.get("preset") or "model"
    preset = result.get("preset")
    return f"{name} ({preset})" if preset and preset != name else str(name)


def plot_f1_bars(results: Sequence[dict], out_png: str | Path, level: str = "packet") -> Path:
    """Per-class F1 bars, one colour per result, side by side (like the paper's Figures 7-8).

    Classes come from the first result; a class another result lacks is drawn at 0.
    """
    plt = _pyplot()
    classes = list(results[0]["classes"])
    width = 0.8 / len(results)
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(classes) * max(1, len(results)) ** 0.5), 4.5))
    for i, result in enumerate(results):
        f1_by_class = {row["class"]: row["f1"] for row in result[level]["per_class"]}
        values = [f1_by_class.get(c, 0.0) for c in classes]
        label = f"{result_label(result)}  macro-F1 {result[level]['macro_f1']:.3f}"
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1, {level} level, split {results[0].get('split', '?')}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save_and_close(fig, out_png)


def plot_confusion(result: dict, out_png: str | Path, level: str = "packet") -> Path:
    """Confusion matrix heat map, rows normalized to recall; cells annotated with counts for <= 20 classes."""
    plt = _pyplot()
    classes = list(result["classes"])
    cm = np.asarray(result[level]["confusion_matrix"], dtype=np.float64)
    support = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    size = max(5.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticks(ticks)
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result_label(result)}: confusion, {level} level (macro-F1 {result[level]['macro_f1']:.3f})")
    if len(classes) <= 20:
        for t in range(len(classes)):
            for p in range(len(classes)):
                if cm[t, p]:
                    color = "white" if normalized[t, p] > 0.5 else "black"
                    ax.text(p, t, f"{int(cm[t, p])}", ha="center", va="center", fontsize=7, color=color)
    return _save_and_close(fig, out_png)
