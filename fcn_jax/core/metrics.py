"""Confusion matrix, the four FCN scores (pixel acc, mean acc, mean IU, fw IU) and per-class precision, recall, F1.

As in the reference (score.py), every score comes from ONE confusion matrix summed
over the whole split, never from averaging per-image scores: per-batch (and
per-device) matrices are simply added, on host, in int64. The per-image mean IU
(the mean over images of each image's own mean IU, as some toolboxes report) is
kept apart, under its own name: it weighs a small image as much as a large one
and a class's IU in an image where it is tiny as much as anywhere, so it differs.
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


def image_confusions(predictions, labels, num_classes: int, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """(B, K, K) int32: `confusion_matrix` of each image of a (B, H, W) batch, in one bincount."""
    k, batch = num_classes, predictions.shape[0]
    gt, pred, valid = _counted(predictions, labels, k, ignore_label)
    image = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), gt.size // max(batch, 1))
    ids = jnp.where(valid, (image * k + gt) * k + pred, batch * k * k)
    counts = jnp.bincount(ids, length=batch * k * k + 1)[: batch * k * k]
    return counts.reshape(batch, k, k).astype(jnp.int32)


def image_mean_iou(confusions) -> jax.Array:
    """(B,) each image's mean IU from its (B, K, K) confusion: the mean over the classes in its labels or its
    prediction (a class only predicted counts with IU 0, as in segmentation_metrics); NaN for an image with no
    labelled pixel (batch padding, an all-ignore label)."""
    confusions = confusions.astype(jnp.float32)
    intersection = jnp.diagonal(confusions, axis1=1, axis2=2)          # (B, K)
    union = confusions.sum(2) + confusions.sum(1) - intersection       # (B, K)
    present = union > 0
    iou = jnp.where(present, intersection / jnp.where(present, union, 1.0), 0.0)
    counted = confusions.sum((1, 2)) > 0
    return jnp.where(counted, iou.sum(1) / jnp.maximum(present.sum(1), 1), jnp.nan)


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

    Precision (of the pixels predicted c, the share labelled c) is NaN for a
    class never predicted; recall (of the pixels labelled c, the share predicted
    c) equals the class accuracy; F1 = 2 TP / (labelled + predicted) is the Dice
    coefficient, NaN where IU is. Their means skip NaN entries like mean IU.

    Returns python floats: pixel_acc, mean_acc, mean_iou, fw_iou, mean_precision,
    mean_recall, mean_f1, and per_class_iou, per_class_precision,
    per_class_recall, per_class_f1 (lists of K floats).
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
        precision = diag / pred_count
        f1 = 2 * diag / (gt_count + pred_count)
        freq = gt_count / total
    present = freq > 0
    fw_iou = float((freq[present] * iou[present]).sum()) if total > 0 else float("nan")
    return {
        "pixel_acc": float(pixel_acc),
        "mean_acc": _nanmean(class_acc),
        "mean_iou": _nanmean(iou),
        "fw_iou": fw_iou,
        "mean_precision": _nanmean(precision),
        "mean_recall": _nanmean(class_acc),
        "mean_f1": _nanmean(f1),
        "per_class_iou": [float(v) for v in iou],
        "per_class_precision": [float(v) for v in precision],
        "per_class_recall": [float(v) for v in class_acc],
        "per_class_f1": [float(v) for v in f1],
    }
