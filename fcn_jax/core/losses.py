"""Per-pixel losses with an ignore label: softmax cross entropy (Caffe SoftmaxWithLoss), and against class
imbalance class weights, focal, OHEM and Dice (LossSpec).

The reference trains with the loss *summed* over valid pixels (``normalize: false``)
and a tiny learning rate; the usual modern recipe averages over valid pixels
instead. Both are offered through ``reduction``.
"""
import dataclasses

import jax
import jax.numpy as jnp

from fcn_jax.core.constants import IGNORE_LABEL

REDUCTIONS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The training loss of a score head (config.loss). With the defaults: plain softmax cross entropy.

    name: "cross_entropy", "focal" (Lin et al. 2017: each pixel's cross entropy x (1 - p)^focal_gamma, p its
      label's probability) or "ohem" (online hard example mining: only pixels whose label's probability is at most
      ohem_threshold, but at least the ohem_min_kept hardest ones);
    class_weights: per head, a weight per class multiplying each pixel's loss (() = all 1); a weighted mean
      divides by the sum of the weights (as torch's CrossEntropyLoss);
    dice_weight: > 0 adds dice_weight x the soft Dice loss (1 - mean over the classes labelled in the batch of
      2 sum(p y) / (sum p + sum y)), x the labelled pixels with reduction "sum".
    """

    name: str = "cross_entropy"
    class_weights: tuple[tuple[float, ...], ...] = ()
    dice_weight: float = 0.0
    focal_gamma: float = 2.0
    ohem_threshold: float = 0.7
    ohem_min_kept: int = 100_000

    def check(self, head_classes: tuple[int, ...]) -> None:
        """One-line ValueErrors for settings no loss can use."""
        if self.name not in NAMES:
            raise ValueError(f"config.loss.name={self.name!r}: expected one of {', '.join(NAMES)}")
        if self.class_weights and tuple(map(len, self.class_weights)) != tuple(head_classes):
            raise ValueError(f"class weights for {list(map(len, self.class_weights))} classes, the model's heads "
                             f"have {list(head_classes)}")
        if not self.dice_weight >= 0 or not self.focal_gamma >= 0:
            raise ValueError(f"config.loss.dice_weight={self.dice_weight} and config.loss.focal_gamma="
                             f"{self.focal_gamma} must be >= 0")
        if not 0 < self.ohem_threshold <= 1 or self.ohem_min_kept < 0:
            raise ValueError(f"config.loss.ohem_threshold={self.ohem_threshold} must be in (0, 1] and "
                             f"config.loss.ohem_min_kept={self.ohem_min_kept} >= 0")


NAMES = ("cross_entropy", "focal", "ohem")
PLAIN = LossSpec()


def pixel_cross_entropy(logits, labels, *, reduction: str = "mean",
                        ignore_label: int = IGNORE_LABEL) -> tuple[jax.Array, jax.Array]:
    """Softmax cross entropy over classes for every labelled pixel: pixel_loss with the plain LossSpec.

    Args:
      logits: (N, H, W, K) scores, any float dtype; computed in float32 so bf16
        activations do not lose precision in the log-sum-exp.
      labels: (N, H, W) int class ids in [0, K), or ``ignore_label``.
      reduction: "sum" (reference Caffe: summed over valid pixels) or "mean"
        (averaged over valid pixels; 0, not NaN, when there are none).
      ignore_label: pixels with this label contribute exactly zero loss and zero
        gradient, whatever their logits are (even inf or NaN).

    Labels outside [0, K) other than ``ignore_label`` are a data bug that cannot
    be raised under jit: their loss is NaN so NaN checks surface it instead of
    training silently on garbage.

    Returns:
      (loss, num_valid): float32 scalar and int32 count of non-ignored pixels (so
      data-parallel callers can re-normalise a global sum themselves).
    """
    return pixel_loss(logits, labels, reduction=reduction, ignore_label=ignore_label)


def pixel_loss(logits, labels, spec: LossSpec = PLAIN, *, head: int = 0, reduction: str = "mean",
               ignore_label: int = IGNORE_LABEL) -> tuple[jax.Array, jax.Array]:
    """The loss of `spec` for score head `head` (its class weights), as pixel_cross_entropy: (loss, num_valid)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits shape {logits.shape} must be labels shape {labels.shape} + (K,)")

    labels = labels.astype(jnp.int32)
    valid = labels != ignore_label                                   # (N, H, W)
    safe_labels = jnp.where(valid, labels, 0)[..., None]             # (N, H, W, 1)
    # Select (never multiply) away ignored pixels, inputs included, so even inf/NaN
    # logits there (e.g. bf16 overflow in padding) give exactly zero loss and gradient.
    safe_logits = jnp.where(valid[..., None], logits.astype(jnp.float32), 0.0)
    log_probs = jax.nn.log_softmax(safe_logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, safe_labels, axis=-1,
                                 mode="fill", fill_value=jnp.nan)[..., 0]  # log p(label), (N, H, W)
    per_pixel = jnp.where(valid, -picked, 0.0)
    weight = valid.astype(jnp.float32)                               # (N, H, W)
    if spec.class_weights:
        table = jnp.asarray(spec.class_weights[head], jnp.float32)
        weight = weight * jnp.take(table, safe_labels[..., 0], mode="fill", fill_value=jnp.nan)
    if spec.name == "focal" and spec.focal_gamma:
        per_pixel = per_pixel * (1.0 - jnp.exp(jnp.where(valid, picked, 0.0))) ** spec.focal_gamma
    elif spec.name == "ohem":
        weight = weight * _hardest(jax.lax.stop_gradient(jnp.exp(picked)), valid, spec)
    per_pixel = jnp.where(valid, weight * per_pixel, 0.0)

    total = jnp.sum(per_pixel)
    num_valid = jnp.sum(valid, dtype=jnp.int32)
    if reduction == "mean":  # (the count itself where every weight is 1: exact at any size)
        weights_sum = (jnp.sum(jnp.where(valid, weight, 0.0)) if spec.class_weights or spec.name == "ohem"
                       else num_valid.astype(jnp.float32))
        total = total / jnp.maximum(weights_sum, 1e-12)
    if spec.dice_weight:
        dice = _dice_loss(jax.nn.softmax(safe_logits, axis=-1), safe_labels[..., 0], valid)
        total = total + spec.dice_weight * dice * (1.0 if reduction == "mean" else num_valid.astype(jnp.float32))
    return total, num_valid


def _hardest(probability, valid, spec: LossSpec) -> jax.Array:
    """OHEM's mask: labelled pixels whose label's probability is <= the threshold, raised to the ohem_min_kept-th
    smallest probability where fewer pixels are below it."""
    ranked = jnp.sort(jnp.where(valid, probability, jnp.inf).ravel())
    num_valid = jnp.sum(valid)
    kth = ranked[jnp.clip(jnp.minimum(spec.ohem_min_kept, num_valid) - 1, 0, ranked.size - 1)]
    threshold = jnp.maximum(spec.ohem_threshold, jnp.where(spec.ohem_min_kept > 0, kth, 0.0))
    return (valid & (probability <= threshold)).astype(jnp.float32)


def _dice_loss(probs, labels, valid) -> jax.Array:
    """1 - mean over the classes labelled in the batch of their soft Dice coefficient (0 with no labelled pixel)."""
    one_hot = jax.nn.one_hot(labels, probs.shape[-1]) * valid[..., None]
    probs = probs * valid[..., None]
    axes = tuple(range(probs.ndim - 1))
    intersection, cardinality = jnp.sum(probs * one_hot, axes), jnp.sum(probs + one_hot, axes)
    labelled = jnp.sum(one_hot, axes) > 0
    dice = 2 * intersection / jnp.maximum(cardinality, 1e-12)
    return jnp.sum(jnp.where(labelled, 1.0 - dice, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)


def split_heads(logits, labels, head_classes: tuple[int, ...]) -> list[tuple[jax.Array, jax.Array]]:
    """(logits, labels) of each head of a multi-head FCN: its channels of the concatenated logits (N, H, W, sum K)
    and its channel of the labels (N, H, W, heads); one head: the arrays as they are."""
    if len(head_classes) == 1:
        return [(logits, labels)]
    if labels.ndim != 4 or labels.shape[-1] != len(head_classes):
        raise ValueError(f"{len(head_classes)} heads need labels (N, H, W, {len(head_classes)}), got {labels.shape}")
    return [(head_logits, labels[..., i]) for i, head_logits in enumerate(split_logits(logits, head_classes))]


def split_logits(logits, head_classes: tuple[int, ...]) -> list:
    """Each head's channels of the concatenated logits (..., sum K) of a multi-head FCN."""
    starts = [sum(head_classes[:i]) for i in range(len(head_classes))]
    return [logits[..., start:start + k] for start, k in zip(starts, head_classes)]


def multi_head_loss(logits, labels, head_classes: tuple[int, ...], spec: LossSpec = PLAIN, *,
                    reduction: str = "mean") -> tuple[jax.Array, jax.Array]:
    """Sum over heads of each head's pixel_loss (the reference's SIFT Flow net: loss + loss_geo), and the first
    head's num_valid; with one head exactly pixel_loss."""
    parts = [pixel_loss(x, y, spec, head=i, reduction=reduction)
             for i, (x, y) in enumerate(split_heads(logits, labels, head_classes))]
    return sum(loss for loss, _ in parts), parts[0][1]
