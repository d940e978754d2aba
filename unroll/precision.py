"""Mixed precision: the networks' layers compute in bfloat16, everything else stays float32.

Flax layers (``nnx.Conv``, ``nnx.ConvTranspose``, ``nnx.Linear``, ``nnx.LayerNorm``, ...) keep
their parameters in ``param_dtype`` (float32 here) and compute in ``dtype``, casting their inputs,
kernel and bias to it; their gradients reach the float32 parameters through that cast, so the
optimiser state and the checkpoints stay float32. ``set_compute_dtype`` sets ``dtype`` on every
such layer of a built model: a network's whole stack of layers then runs in bfloat16 (each layer
casts what it reads, whatever its producer's dtype), while the rest keeps its float32 inputs'
dtype: flows and sampling coordinates (``flow + delta`` promotes to float32), correlations and
cost volumes (computed in float32 whatever the features' dtype), normalisation statistics (flax
computes them in float32), the convex-upsampling softmax, the hand-tuned operators and learned
scalars. ``float32_solution`` casts a model's output before losses and metrics.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from unroll.config import ConfigError
from unroll.solver import Solution

#: ``compute_dtype`` names and their dtypes.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def network_layers(model: nnx.Module) -> list[nnx.Module]:
    """The layers of ``model`` with a compute ``dtype`` of their own beside their ``param_dtype``
    (flax's convention: convolutions, dense layers, layer and group norms, attention)."""
    return [m for _, m in nnx.iter_graph(model)
            if isinstance(m, nnx.Module) and hasattr(m, "dtype") and hasattr(m, "param_dtype")]


def set_compute_dtype(model: nnx.Module, name: str) -> nnx.Module:
    """``model`` with every network layer computing in ``COMPUTE_DTYPES[name]`` (parameters untouched);
    ``float32`` leaves the model as built.

    Raises ``ConfigError`` for ``bfloat16`` on a model without network layers (a hand-tuned
    method, or one whose only learned parts are scalars): nothing of it would change.
    """
    if name == "float32":
        return model  # layers keep dtype None: they compute in their inputs' dtype (float64 in tests)
    layers = network_layers(model)
    if not layers:
        raise ConfigError(f"compute_dtype={name}: the method has no network layers to run in {name} (hand-tuned "
                          "operators and learned scalars compute in float32); keep compute_dtype=float32")
    for layer in layers:
        layer.dtype = COMPUTE_DTYPES[name]
    return model


def float32_solution(solution: Solution) -> Solution:
    """``solution`` with its flow ``(h, w, 2)`` and trajectory ``(n, h, w, 2)`` in float32."""
    trajectory = None if solution.trajectory is None else solution.trajectory.astype(jnp.float32)
    return solution._replace(flow=solution.flow.astype(jnp.float32), trajectory=trajectory)
