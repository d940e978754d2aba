"""One jitted training step for any model built from the solver: AdamW, schedule, clipping,
sequence loss over the unrolled trajectory, and a dict of measurements; on one device or
data-parallel over a mesh (``unroll.distributed``), with optional gradient accumulation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unroll import distributed
from unroll.config import choice
from unroll.errors import InputError
from unroll.losses import endpoint_error, sequence_loss
from unroll.precision import float32_solution


@dataclass(frozen=True)
class OperatorRates:
    """Learning rate of each operator's parameters relative to ``learning_rate``: the parameters
    under the model's ``data``, ``smoothness``, ``step`` or ``prefilter`` module (RAFT's feature
    encoder is its data term, its context encoder and GRU update its step). An operator the method
    does not learn ignores its rate. Multiplies ``network_lr_scale`` on the networks' weights."""

    data: float = 1.0
    smoothness: float = 1.0
    step: float = 1.0
    prefilter: float = 1.0


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
    loss: str = choice("l1", "l1", "epe")
    """Per-pixel error of the sequence loss: RAFT's L1 or the end-point error."""
    loss_weights: tuple[float, ...] = ()
    """Weights of the trajectory's predictions, first to last, instead of ``gamma``'s powers."""
    network_lr_scale: float = 1.0
    """Learning rate of the networks' weights (convolution kernels and biases) relative to
    ``learning_rate``; the other parameters (step sizes, prefilter taps, ...) take it as is."""
    operator_lr_scale: OperatorRates = OperatorRates()
    """Per-operator factors on the learning rate, e.g. ``operator_lr_scale.step=10``: ten step
    sizes want a larger rate than the thousands of weights of a CNN."""
    shard_state: bool = False
    """Split the optimiser state (Adam's moments) over the devices instead of copying it to each
    (ZeRO stage 1): less memory per device, the same steps; the parameters stay replicated."""
    accumulate: int = 1
    """Micro-batches per step: the batch is split into ``accumulate`` parts whose gradients are
    computed one after the other and averaged (the same step as the whole batch at once, in less memory)."""


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
                       optax.masked(optax.scale(config.network_lr_scale), network_weights),
                       *(optax.masked(optax.scale(rate), parameters_named(name))
                         for name, rate in asdict(config.operator_lr_scale).items() if rate != 1.0))


def parameters_named(*names: str) -> Callable:
    """A mask function: ``params`` -> the same pytree with True at the leaves whose path holds one
    of ``names`` (a module's attribute or a leaf's name)."""
    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(key, "key", None) in names for key in path), params)
    return mask


#: The mask of the networks' weights: leaves named ``kernel`` or ``bias``.
network_weights = parameters_named("kernel", "bias")


def check_batch_size(batch_size: int, devices: int, accumulate: int) -> None:
    """Raise ``InputError`` unless a batch of ``batch_size`` splits into ``accumulate`` equal
    micro-batches, each split evenly over ``devices``."""
    if batch_size % (devices * accumulate):
        factors = f"the device count {devices}" + (f" x optim.accumulate={accumulate}" if accumulate > 1 else "")
        raise InputError(f"data.batch_size={batch_size} must be a multiple of {devices * accumulate} ({factors}) "
                         "to split evenly")


def make_train_step(model: nnx.Module, config: OptimConfig,
                    mesh: Mesh | None = None) -> tuple[Callable, nnx.State, optax.OptState]:
    """A jitted ``step(params, opt_state, batch) -> (params, opt_state, measurements)``.

    ``model`` maps ``(frame1, frame2)`` to a ``Solution`` (build it with ``keep_trajectory=True``
    for the sequence loss). ``batch`` holds ``frame1, frame2`` ``(b, h, w, c)``, ``flow``
    ``(b, h, w, 2)`` and ``valid`` ``(b, h, w)``. Returns the step, the initial trainable
    parameters and optimiser state; ``nnx.update(model, params)`` writes parameters back.

    With ``mesh`` (``unroll.distributed.mesh()``) the step is data-parallel: the batch is split
    over the mesh's devices along ``b``, the parameters and optimiser state are replicated (the
    optimiser state split over the devices with ``config.shard_state``; the ones returned are
    already placed, as copies) and donated: a call consumes the arrays passed in.
    ``b`` must be a multiple of the device count times ``config.accumulate``.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optimizer(config)
    devices = 1 if mesh is None else mesh.size

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params, rest)

        def one(frame1, frame2, flow_gt, valid):
            solution = float32_solution(model(frame1, frame2))  # the loss in float32 whatever the compute dtype
            trajectory = solution.flow if solution.trajectory is None else solution.trajectory
            return (sequence_loss(trajectory, flow_gt, valid, config.gamma, config.max_flow, config.loss_weights,
                                  config.loss),
                    endpoint_error(solution.flow, flow_gt, valid, config.max_flow))

        losses, epes = jax.vmap(one)(batch["frame1"], batch["frame2"], batch["flow"], batch["valid"])
        return jnp.mean(losses), jnp.mean(epes)

    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, batch):
        """``value_and_grad`` averaged over ``config.accumulate`` micro-batches: micro-batch ``j``
        holds the samples ``i`` with ``i % accumulate == j``, so each device keeps its own samples."""
        micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(-1, config.accumulate, *x.shape[1:]), 1, 0), batch)
        if mesh is not None:
            split = NamedSharding(mesh, PartitionSpec(None, distributed.DATA_AXIS))
            micro = jax.lax.with_sharding_constraint(micro, split)

        def add(total, micro_batch):
            return jax.tree.map(jnp.add, total, value_and_grad(params, micro_batch)), None

        shapes = jax.eval_shape(value_and_grad, params, jax.tree.map(lambda x: x[0], micro))
        total, _ = jax.lax.scan(add, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), micro)
        return jax.tree.map(lambda x: x / config.accumulate, total)

    def step(params, opt_state, batch):
        check_batch_size(batch["frame1"].shape[0], devices, config.accumulate)
        gradients = value_and_grad if config.accumulate == 1 else accumulated
        (loss, epe), grads = gradients(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        measurements = {"loss": loss, "epe": epe, "grad_norm": optax.tree.norm(grads),
                        "param_norm": optax.tree.norm(params)}
        return params, opt_state, measurements

    opt_state = tx.init(params)
    if mesh is None:
        return jax.jit(step), params, opt_state
    replicated = distributed.replicated(mesh)
    state = distributed.state_sharding(opt_state, mesh, config.shard_state)
    sharded_step = jax.jit(step, in_shardings=(replicated, state, distributed.batch_sharding(mesh)),
                           out_shardings=(replicated, state, replicated), donate_argnums=(0, 1))
    return sharded_step, distributed.replicate(params, mesh), jax.device_put(opt_state, state, may_alias=False)
