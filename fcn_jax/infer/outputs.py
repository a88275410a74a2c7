"""The files segmenting an image writes: a palette mask, a colour overlay and (optionally) a figure with a legend,
named and coloured by the dataset's description; the masks of a second head and later ones get the head's name.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from fcn_jax.data import dataset_info, visualize


def prepare_output(directory: str) -> str:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"--output {directory} is an existing file, not a folder")
    os.makedirs(directory, exist_ok=True)
    return directory


def save_figure(path: str, image: np.ndarray, mask: np.ndarray, info: dataset_info.DatasetInfo) -> None:
    """image | prediction | legend of the classes present, named by the dataset (matplotlib, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    palette = info.palette()
    present = [int(c) for c in np.unique(mask)]
    handles = [Patch(color=palette[c] / 255.0, label=info.classes[c] if c < info.num_classes else str(c))
               for c in present]
    columns = -(-len(handles) // 12)  # at most 12 names a column: fits the 4-inch height
    height, width = mask.shape
    panel, legend = 4.0 * width / height, 1.7 * columns  # inches, panels 4 inches high
    figure = Figure(figsize=(2 * panel + legend, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": [panel, panel, legend]})
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(visualize.colorize(mask, palette), interpolation="nearest")
    axes[1].set_title("prediction")
    axes[2].legend(handles=handles, loc="center left", ncol=columns, fontsize="small", frameon=False)
    for ax in axes:
        ax.axis("off")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.92, wspace=0.04)
    figure.savefig(path, dpi=100)


def write_outputs(directory: str, path: str, image: np.ndarray, mask: np.ndarray, heads: dataset_info.Heads,
                  figure: bool) -> None:
    """<stem>.png, <stem>_overlay.jpg (and <stem>_figure.png); the masks of a second head and later ones get
    the head's name after the stem (<stem>_geo.png ...)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    masks = [mask] if mask.ndim == 2 else [mask[..., i] for i in range(mask.shape[-1])]
    for index, ((name, info), head_mask) in enumerate(zip(heads, masks)):
        out = os.path.join(directory, stem + (f"_{name}" if index else ""))
        palette = info.palette()
        visualize.save_mask(head_mask, f"{out}.png", palette)
        Image.fromarray(visualize.overlay(image, head_mask, palette=palette, background=info.background)).save(
            f"{out}_overlay.jpg", quality=90)
        if figure:
            save_figure(f"{out}_figure.png", image, head_mask, info)
