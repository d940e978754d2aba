"""One jitted training step for any model built from the solver: AdamW, schedule, clipping,
sequence loss over the unrolled trajectory, and a dict of measurements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from unroll.config import choice
from unroll.losses import endpoint_error, sequence_loss


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warm-up + one-cycle or cosine decay and global-norm clipping (RAFT's recipe)."""

    steps: int = 1000
    learning_rate: float = 4e-4
    weight_decay: float = 1e-4
    schedule: str = choice("onecycle", "onecycle", "cosine", "constant")
    warmup_fraction: float = 0.05
    clip: float = 1.0
    gamma: float = 0.8
    max_flow: float = 400.0
    network_lr_scale: float = 1.0
    """Learning rate of the networks' weights (convolution kernels and biases) relative to
    ``learning_rate``; the other parameters (step sizes, prefilter taps, ...) take it as is."""


def learning_rate(config: OptimConfig) -> optax.Schedule:
    """The learning rate as a function of the step."""
    warmup = max(1, int(config.warmup_fraction * config.steps))
    return {
        "onecycle": lambda: optax.cosine_onecycle_schedule(config.steps, config.learning_rate,
                                                           pct_start=config.warmup_fraction),
        "cosine": lambda: optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, config.steps),
        "constant": lambda: optax.constant_schedule(config.learning_rate),
    }[config.schedule]()


def optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """The optax transformation described by ``config``."""
    return optax.chain(optax.clip_by_global_norm(config.clip),
                       optax.adamw(learning_rate(config), weight_decay=config.weight_decay, eps=1e-8),
                       optax.masked(optax.scale(config.network_lr_scale), network_weights))


def network_weights(params):
    """The pytree of ``params`` with True at the networks' weights: leaves named ``kernel`` or ``bias``."""
    def mark(path, _):
        return any(getattr(key, "key", None) in ("kernel", "bias") for key in path)
    return jax.tree_util.tree_map_with_path(mark, params)


def make_train_step(model: nnx.Module, config: OptimConfig) -> tuple[Callable, nnx.State, optax.OptState]:
    """A jitted ``step(params, opt_state, batch) -> (params, opt_state, measurements)``.

    ``model`` maps ``(frame1, frame2)`` to a ``Solution`` (build it with ``keep_trajectory=True``
    for the sequence loss). ``batch`` holds ``frame1, frame2`` ``(b, h, w, c)``, ``flow``
    ``(b, h, w, 2)`` and ``valid`` ``(b, h, w)``. Returns the step, the initial trainable
    parameters and optimiser state; ``nnx.update(model, params)`` writes parameters back.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optimizer(config)

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params, rest)

        def one(frame1, frame2, flow_gt, valid):
            solution = model(frame1, frame2)
            trajectory = solution.flow if solution.trajectory is None else solution.trajectory
            return (sequence_loss(trajectory, flow_gt, valid, config.gamma, config.max_flow),
                    endpoint_error(solution.flow, flow_gt, valid, config.max_flow))

        losses, epes = jax.vmap(one)(batch["frame1"], batch["frame2"], batch["flow"], batch["valid"])
        return jnp.mean(losses), jnp.mean(epes)

    @jax.jit
    def step(params, opt_state, batch):
        (loss, epe), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        measurements = {"loss": loss, "epe": epe, "grad_norm": optax.tree.norm(grads),
                        "param_norm": optax.tree.norm(params)}
        return params, opt_state, measurements

    return step, params, tx.init(params)
