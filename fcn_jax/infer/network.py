"""A network ready for inference: its model, params replicated over a mesh, and the settings it was loaded with.

    weights (a training workdir, its checkpoints/ dir, or converted weights) --load_network--> Network
The settings (variant, classes, width, geometry, normalisation) come with the weights (weights.artifacts); the
params must fit the model exactly (weights.merge).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn
from jax.sharding import Mesh

from fcn_jax.core import parallel
from fcn_jax.models import zoo
from fcn_jax.weights import artifacts, checkpoints
from fcn_jax.weights.merge import ParamMismatchError, merge_params


@dataclasses.dataclass(frozen=True)
class Network:
    """A model, its params (replicated over `mesh`) and the settings they were loaded with."""

    model: nn.Module
    params: Any
    settings: dict
    mesh: Mesh

    @property
    def num_classes(self) -> int:
        return self.settings["num_classes"]

    @property
    def heads(self) -> tuple[tuple[str, int], ...]:
        return zoo.head_specs(self.model.num_classes, self.model.heads)


def load_network(weights: str, overrides: dict | None = None, mesh: Mesh | None = None) -> Network:
    """Weights (workdir, checkpoints dir or converted dir) -> Network; params must fit the model exactly."""
    settings = artifacts.model_settings(weights, overrides)
    try:
        model = zoo.from_settings(settings)
        template = zoo.param_template(model)
    except ValueError as error:  # unknown variant / geometry / dtype
        raise ValueError(f"{weights}: {error}") from None
    try:
        params, _ = merge_params(template, checkpoints.load_params(weights), strict=True)
    except ParamMismatchError as error:
        described = ", ".join(f"{k}={settings[k]}" for k in ("variant", "num_classes", "width"))
        raise ValueError(f"{weights} does not fit {described}: {'; '.join(error.problems)}") from None
    mesh = parallel.create_mesh() if mesh is None else mesh
    return Network(model, parallel.replicate(params, mesh), settings, mesh)
