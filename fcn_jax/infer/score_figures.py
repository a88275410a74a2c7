"""Figures of how a model scores on labelled images: the confusion matrix (rows normalised, class names) and an
image beside its label and prediction (with the pixels to look at, when there are some). matplotlib, no pyplot."""
from __future__ import annotations

import numpy as np

from fcn_jax.data import dataset_info, visualize


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def normalized_rows(confusion) -> np.ndarray:
    """(K, K) share of each labelled class's pixels predicted as each class; a row without pixels stays 0."""
    confusion = np.asarray(confusion, np.float64)
    totals = confusion.sum(1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def confusion_figure(path: str, confusion, classes, title: str = "") -> None:
    """Rows: the labelled class; columns: the predicted one; each row sums to 100% of its labelled pixels."""
    rows = normalized_rows(confusion)
    k = len(classes)
    side = min(4 + 0.45 * k, 24)
    figure = _figure((side + 1.5, side))
    ax = figure.subplots()
    shown = ax.imshow(100 * rows, cmap="Blues", vmin=0, vmax=100)
    figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="% of the labelled class's pixels")
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(k), classes, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("labelled")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if rows[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize="x-small",
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion (rows normalised)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def comparison_figure(path: str, image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                      info: dataset_info.DatasetInfo, title: str, marked: np.ndarray | None = None,
                      marked_title: str = "") -> None:
    """image | label | prediction (| `marked` pixels in red over the image, titled marked_title)."""
    palette = info.palette()
    panels = [(image, "image"), (visualize.colorize(label, palette), "label"),
              (visualize.colorize(prediction, palette), "prediction")]
    if marked is not None:
        red = np.where(marked[..., None], np.array([255, 0, 0], np.uint8), image)
        panels.append((((image.astype(np.float32) + red) / 2).astype(np.uint8), marked_title))
    height, width = label.shape
    figure = _figure((len(panels) * 3.2 * width / height, 3.6))
    for ax, (panel, name) in zip(figure.subplots(1, len(panels)), panels):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(name, fontsize="small")
        ax.axis("off")
    figure.suptitle(title, fontsize="small")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.82, wspace=0.04)
    figure.savefig(path, dpi=100)
