"""The dense CRF as an inference mode (models.crf): one image's logits refined over its pixels, and the CRF
parameters stored with weights.

    refine(logits, image, settings, heads) -> logits     each head refined on its own
    stored_settings(weights) -> CRFSettings | None       crf.json next to the weights (the grid search writes it)
Three compiled calls: the lattice keys, whose counts the host reads to size the lattices (a power of two, so few
sizes compile), the kernels, and the mean field; images are padded to a multiple of PIXEL_BUCKET pixels and the
parameters are traced, so one compilation serves many image sizes and every grid point of a search. Used by
infer.runner after any other mode (windows, flips, scales average the logits first).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from fcn_jax.core import losses
from fcn_jax.models import crf
from fcn_jax.weights import artifacts

CRF_FILE = "crf.json"  # {"settings": {...}, ...} next to the weights: what `--crf` uses when given no values

_keys = jax.jit(crf.kernel_keys, static_argnames="words")
_kernels = jax.jit(crf.kernels_from_keys, static_argnames="capacities")
_mean_field = jax.jit(crf.mean_field, static_argnames="iterations")
PIXEL_BUCKET = 4096  # images are padded to a multiple of this many pixels: far fewer shapes compile than sizes


def refine(logits: np.ndarray, image: np.ndarray, settings: crf.CRFSettings,
           heads: tuple[tuple[str, int], ...]) -> np.ndarray:
    """(H, W, classes of all heads) float32 logits of one uint8 (H, W, 3) RGB image -> the CRF's logits."""
    height, width = image.shape[:2]
    widths, words = crf.kernel_widths(settings, height, width)
    num_pixels = height * width
    padded = -(-num_pixels // PIXEL_BUCKET) * PIXEL_BUCKET
    # padding repeats pixel 0 with zero weight: no lattice point added, nothing splatted (permutohedral.keys)
    take = np.minimum(np.arange(padded), num_pixels - 1) * (np.arange(padded) < num_pixels)
    positions, colours = crf.pixel_grid(height, width)[take], image.reshape(-1, 3)[take]
    keys = _keys(positions, colours, np.arange(padded) < num_pixels, widths, words)
    capacities = tuple(sorted((name, crf.capacity(int(k.count))) for name, k in keys.items()))
    kernels = _kernels(keys, capacities)
    weights = {"gaussian": settings.gaussian_weight, "bilateral": settings.bilateral_weight}
    outs = []
    for head in losses.split_logits(np.asarray(logits, np.float32), tuple(k for _, k in heads)):
        classes = head.shape[-1]
        flat = head.reshape(num_pixels, classes)[take]
        out = _mean_field(flat, kernels, {name: weights[name] for name in kernels}, crf.potts(classes),
                          settings.iterations)
        outs.append(np.asarray(out)[:num_pixels].reshape(height, width, classes))
    return np.concatenate(outs, -1)


def settings_path(weights: str) -> str:
    """Where the CRF settings of `weights` live: in the workdir, or the folder of converted weights."""
    path = os.path.abspath(os.path.expanduser(weights))
    if os.path.basename(path) == "checkpoints":
        path = os.path.dirname(path)
    return os.path.join(path if os.path.isdir(path) else os.path.dirname(path), CRF_FILE)


def stored_settings(weights: str) -> crf.CRFSettings | None:
    """The CRF settings stored with `weights` (crf.json), None without one."""
    path = settings_path(weights)
    if not os.path.exists(path):
        return None
    stored = artifacts.read_json(path)
    try:
        return crf.CRFSettings.from_mapping(stored["settings"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def store_settings(weights: str, settings: crf.CRFSettings, **record) -> str:
    """Write crf.json next to `weights` (atomically); `record`: how the settings were chosen."""
    path = settings_path(weights)
    artifacts.write_json(path, {"settings": settings.as_dict(), **record})
    return path
