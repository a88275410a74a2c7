"""Per-pixel softmax cross entropy with an ignore label (Caffe SoftmaxWithLoss).

The reference trains with the loss *summed* over valid pixels (``normalize: false``)
and a tiny learning rate; the usual modern recipe averages over valid pixels
instead. Both are offered through ``reduction``.
"""
import jax
import jax.numpy as jnp

from fcn_jax.core.constants import IGNORE_LABEL

REDUCTIONS = ("sum", "mean")


def pixel_cross_entropy(logits, labels, *, reduction: str = "mean",
                        ignore_label: int = IGNORE_LABEL) -> tuple[jax.Array, jax.Array]:
    """Softmax cross entropy over classes for every labelled pixel.

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
                                 mode="fill", fill_value=jnp.nan)[..., 0]
    per_pixel = jnp.where(valid, -picked, 0.0)                       # (N, H, W)

    total = jnp.sum(per_pixel)
    num_valid = jnp.sum(valid, dtype=jnp.int32)
    if reduction == "mean":
        total = total / jnp.maximum(num_valid, 1).astype(jnp.float32)
    return total, num_valid


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


def multi_head_cross_entropy(logits, labels, head_classes: tuple[int, ...], *,
                             reduction: str = "mean") -> tuple[jax.Array, jax.Array]:
    """Sum over heads of each head's pixel_cross_entropy (the reference's SIFT Flow net: loss + loss_geo), and
    the first head's num_valid; with one head exactly pixel_cross_entropy."""
    parts = [pixel_cross_entropy(x, y, reduction=reduction) for x, y in split_heads(logits, labels, head_classes)]
    return sum(loss for loss, _ in parts), parts[0][1]
