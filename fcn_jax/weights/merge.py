"""Fitting loaded params to a model's param tree, strictly or partly, with one report of what did not fit.

Every path that puts weights into a model goes through `merge_params`: converting a file (weights.convert),
`init_from` in training (train.job) and loading weights for inference (infer.network).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from flax import traverse_util


class ParamMismatchError(ValueError):
    """Weights that do not fit a param tree; `problems` lists them ('missing: ...', 'unexpected: ...', ...)."""

    def __init__(self, problems: list[str]):
        super().__init__("weights do not fit the model: " + "; ".join(problems))
        self.problems = problems


def _path_name(path: tuple) -> str:
    return "/".join(map(str, path))


def _layer_names(paths: list[tuple], tree_paths) -> list[str]:
    """Sorted names for messages: a layer when all its leaves are in `paths`, else 'layer/leaf'."""
    chosen, names = set(paths), set()
    for path in paths:
        parent = path[:-1]
        whole = parent and all(p in chosen for p in tree_paths if p[:-1] == parent)
        names.add(_path_name(parent if whole else path))
    return sorted(names)


def merge_params(template: Mapping, loaded: Mapping, strict: bool = True) -> tuple[dict, dict]:
    """Fills `template`'s leaves from `loaded`, matching by path; returns (params, report).

    template: any nested param dict (arrays, or ShapeDtypeStructs from jax.eval_shape when every
    leaf will be loaded). Loaded leaves are cast to the template leaf's dtype. Shape mismatches
    are always an error; with strict=True so are template leaves missing from `loaded` and
    `loaded` leaves the template lacks. With strict=False missing leaves keep the template's
    value ('new') and extra ones are dropped ('unused'). All problems come in one
    ParamMismatchError (a ValueError).
    report: {'loaded', 'new', 'unused'}: lists of layer names ('backbone/conv1_1', 'fc8', ...).
    """
    want = traverse_util.flatten_dict(template)
    have = traverse_util.flatten_dict(loaded)
    missing = [p for p in want if p not in have]
    unused = [p for p in have if p not in want]
    mismatched = sorted(
        f"{_path_name(p)} {tuple(np.shape(have[p]))} in weights vs {tuple(want[p].shape)} in model"
        for p in want
        if p in have and tuple(np.shape(have[p])) != tuple(want[p].shape)
    )
    problems = []
    if strict and missing:
        problems.append("missing: " + ", ".join(_layer_names(missing, want)))
    if strict and unused:
        problems.append("unexpected: " + ", ".join(_layer_names(unused, have)))
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched))
    if problems:
        raise ParamMismatchError(problems)
    merged = {p: np.asarray(have[p], dtype=want[p].dtype) if p in have else want[p] for p in want}
    report = {
        "loaded": _layer_names([p for p in want if p in have], want),
        "new": _layer_names(missing, want),
        "unused": _layer_names(unused, have),
    }
    return traverse_util.unflatten_dict(merged), report
