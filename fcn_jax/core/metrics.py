"""Confusion matrix and the four FCN scores (pixel acc, mean acc, mean IU, fw IU).

As in the reference (score.py), every score comes from ONE confusion matrix summed
over the whole split, never from averaging per-image scores: per-batch (and
per-device) matrices are simply added, on host, in int64.
"""
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.core.constants import IGNORE_LABEL


def confusion_matrix(predictions, labels, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """(K, K) int32 counts, rows = ground truth, columns = prediction.

    Sums over all leading dims; jit-able with ``num_classes`` static. Pixels whose
    label is ``ignore_label`` or outside [0, K) are dropped, as are predictions
    outside [0, K) (impossible for an argmax, but they would land in the wrong row).

    Implemented as a bincount of gt*K + pred with one overflow bin for dropped
    pixels (jnp.bincount clips negative ids to bin 0, so they cannot just be left
    out of range). A float32 one-hot matmul would be slower on CPU and exact only
    below 2**24 counts per cell.
    """
    k = num_classes
    gt, pred, valid = _counted(predictions, labels, k, ignore_label)
    ids = jnp.where(valid, gt * k + pred, k * k)
    counts = jnp.bincount(ids, length=k * k + 1)[: k * k]
    return counts.reshape(k, k).astype(jnp.int32)


def _counted(predictions, labels, k: int, ignore_label: int):
    """Flat int32 labels and predictions (int32 first: uint8 labels would overflow in gt * K) and the mask of the
    pixels a confusion matrix counts."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions shape {predictions.shape} != labels shape {labels.shape}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"num_classes must be a positive int, got {k!r}")
    gt = jnp.ravel(labels).astype(jnp.int32)
    pred = jnp.ravel(predictions).astype(jnp.int32)
    return gt, pred, (gt != ignore_label) & (gt >= 0) & (gt < k) & (pred >= 0) & (pred < k)


def pixel_accuracy(predictions, labels, num_classes: int, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """trace / sum of `confusion_matrix` (0 where no pixel counts), as two sums: no scatter, which on a GPU
    costs atomics on K * K bins for every pixel of the batch."""
    gt, pred, valid = _counted(predictions, labels, num_classes, ignore_label)
    return jnp.sum(valid & (gt == pred)) / jnp.maximum(jnp.sum(valid), 1)


def _nanmean(x: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN (without numpy's warning) when there are none."""
    kept = x[~np.isnan(x)]
    return float(kept.mean()) if kept.size else float("nan")


def segmentation_metrics(confusion) -> dict:
    """Scores of a (K, K) confusion matrix (rows = ground truth), as the reference.

    NaN convention: a class absent from both ground truth and prediction has IU
    NaN and is excluded from mean IU; a class absent from ground truth has
    accuracy NaN and is excluded from mean acc (if it was predicted, its IU is 0
    and counts). An empty matrix gives NaN for every score.

    Returns python floats: pixel_acc, mean_acc, mean_iou, fw_iou, and
    per_class_iou (list of K floats).
    """
    hist = np.asarray(confusion, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {hist.shape}")
    diag = np.diag(hist)
    gt_count = hist.sum(axis=1)    # (K,) pixels labelled c
    pred_count = hist.sum(axis=0)  # (K,) pixels predicted c
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pixel_acc = diag.sum() / total
        class_acc = diag / gt_count
        iou = diag / (gt_count + pred_count - diag)
        freq = gt_count / total
    present = freq > 0
    fw_iou = float((freq[present] * iou[present]).sum()) if total > 0 else float("nan")
    return {
        "pixel_acc": float(pixel_acc),
        "mean_acc": _nanmean(class_acc),
        "mean_iou": _nanmean(iou),
        "fw_iou": fw_iou,
        "per_class_iou": [float(v) for v in iou],
    }
