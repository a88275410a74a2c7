"""How many images a recipe needs: the same recipe trained on nested, seeded fractions of its training split
(config.data.train_fraction, data.subsets), and a power law fitted to the scores.

The fit: the error 1 - mean IU falls as a power of the training images, 1 - mIU = a x n^(-b) (the learning curves
of Hestness et al. 2017 in their power-law region), a straight line in log-log fitted by least squares. The images
a target mean IU needs follow from it; their uncertainty comes from the fit's parameter covariance (residual
variance over the points - 2 degrees of freedom), drawn 4000 times, seeded: a 68% interval. Two points give no
interval, and an extrapolation far beyond the largest fraction is only as good as the power law there.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def variant_name(fraction: float) -> str:
    return f"fraction_{fraction:g}"


def sweep(fractions=FRACTIONS) -> list[tuple[str, dict]]:
    """The ablation runner's variants: one a fraction (nested: data.subsets)."""
    return [(variant_name(f), {"data.train_fraction": float(f)}) for f in sorted(fractions)]


def parse_fractions(text: str) -> tuple[float, ...]:
    """"0.125,0.25,0.5,1" -> fractions, each in (0, 1], at least two; one-line ValueError otherwise."""
    try:
        fractions = tuple(sorted({float(f) for f in text.split(",") if f.strip()}))
    except ValueError:
        raise ValueError(f"--fractions {text!r}: expected numbers such as 0.125,0.25,0.5,1") from None
    if len(fractions) < 2 or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"--fractions {text!r}: give at least two fractions in (0, 1]")
    return fractions


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """1 - mean IU = exp(log_a) x n^(-b), with the covariance of (log_a, b)."""

    log_a: float
    b: float
    covariance: np.ndarray | None  # (2, 2); None from two points

    def mean_iou(self, images) -> np.ndarray:
        return 1.0 - np.exp(self.log_a - self.b * np.log(np.asarray(images, np.float64)))

    def images_for(self, target: float, seed: int = 0) -> tuple[float, float, float]:
        """(images, low, high) for mean IU `target`: the fit's count and its 68% interval (NaN where unknown;
        inf where the curve does not rise to it)."""
        def count(log_a, b):
            return np.where(b > 0, np.exp((log_a - math.log(1 - target)) / np.where(b > 0, b, 1.0)), np.inf)

        best = float(count(self.log_a, self.b))
        if self.covariance is None:
            return best, float("nan"), float("nan")
        draws = np.random.default_rng(seed).multivariate_normal([self.log_a, self.b], self.covariance, 4000)
        counts = np.sort(count(draws[:, 0], draws[:, 1]))  # (inf where a draw does not rise: no interpolation)
        return best, float(counts[int(0.16 * len(counts))]), float(counts[int(0.84 * len(counts))])


def fit(images, mean_ious) -> PowerLaw:
    """Least squares of log(1 - mIU) on log(images); a ValueError in one line where no curve fits."""
    n, m = np.asarray(images, np.float64), np.asarray(mean_ious, np.float64)
    if len(set(n.tolist())) < 2:
        raise ValueError("a learning curve needs runs on at least two different numbers of images")
    if not np.all((m < 1) & np.isfinite(m)):
        raise ValueError(f"mean IU {m.tolist()}: a power law fits errors 1 - mean IU > 0 only")
    x = np.stack([np.ones_like(n), -np.log(n)], 1)
    y = np.log(1 - m)
    theta, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(n) - 2
    covariance = None
    if dof > 0:
        residual = y - x @ theta
        covariance = float(residual @ residual / dof) * np.linalg.inv(x.T @ x)
    return PowerLaw(float(theta[0]), float(theta[1]), covariance)


def plot(path: str, images, mean_ious, per_class: dict[str, list[float]], law: PowerLaw | None,
         target: float | None, title: str) -> None:
    """Mean IU and each class's IU against the training images (log x), with the fitted curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for i, (name, values) in enumerate(per_class.items()):
        ax.plot(images, [100 * v for v in values], marker=".", linestyle=":", color=f"C{(i + 1) % 10}", alpha=0.7,
                label=f"IU {name}")
    ax.plot(images, [100 * v for v in mean_ious], marker="o", color="C0", linewidth=2, label="mean IU")
    if law is not None:
        top = max(images) * 4
        if target is not None:
            count = law.images_for(target)[0]
            top = max(top, min(count * 1.2, max(images) * 100)) if math.isfinite(count) else top
        grid = np.geomspace(min(images), top, 100)
        ax.plot(grid, 100 * law.mean_iou(grid), color="C0", linestyle="--",
                label=f"fit: 1 - mIU = {math.exp(law.log_a):.3g} n^-{law.b:.3g}")
    if target is not None:
        ax.axhline(100 * target, color="grey", linewidth=0.8, label=f"target {100 * target:g}")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("IU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
