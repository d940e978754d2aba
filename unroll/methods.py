"""The method configuration schema and its builder: one place that maps names to operators.

A ``MethodConfig`` names, per operator, which implementation to use and its numbers. ``build``
turns it into a ``CoarseToFine`` module. Swapping one operator is one key:
``--set step.kind=jacobi``. Dictionaries (not string lookups of attributes) map every name to
its class, so a typo fails when the config is checked and grep finds every use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
from flax import nnx

from classical.cost_volume import CostVolume
from classical.data_terms import BrightnessConstancy, WindowedBrightnessConstancy
from classical.penalties import Charbonnier, Quadratic
from classical.prefilters import GaussianPrefilter
from classical.smoothness import STENCILS, PairwiseSmoothness, half_stencil
from classical.steps import BlockJacobiStep, GradientStep, RedBlackStep
from learned.data_terms import LearnedFeatures
from learned.flowformer import flowformer
from learned.flownet import FlowNetC, FlowNetS
from learned.gmflow import SCALES, GMFlow
from learned.prefilters import LearnedPrefilter
from learned.pwcnet import PWCNet
from learned.raft.model import FACTOR, raft
from learned.smoothness import ContextEdgeWeights
from learned.steps import LearnedPreconditioner, LearnedStepSizes, RecurrentStep
from unroll.config import ConfigError, choice
from unroll.energy import Energy
from unroll.gradients import Implicit, Truncated, Unrolled
from unroll.precision import COMPUTE_DTYPES, set_compute_dtype
from unroll.solver import CoarseToFine, UnrolledSolver
from unroll.warp import BilinearWarp


@dataclass(frozen=True)
class PenaltyConfig:
    """``kind``: quadratic (least squares) or charbonnier ``(s + eps^2)^exponent``."""

    kind: str = choice("quadratic", "quadratic", "charbonnier")
    eps: float = 1e-3
    exponent: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    """Data term. ``brightness``: pointwise constancy; ``windowed``: Gaussian-window (Lucas-Kanade);
    ``cost-volume``: soft matching over a local cost volume (``radius``, ``temperature``).

    ``gradient_weight`` > 0 adds gradient constancy (pointwise term only); ``colour`` uses the
    three colour channels instead of grey.
    """

    kind: str = choice("brightness", "brightness", "windowed", "cost-volume")
    penalty: PenaltyConfig = PenaltyConfig()
    weight: float = 1.0
    blend: float = 0.5
    gradient_weight: float = 0.0
    window_sigma: float = 2.0
    colour: bool = False
    learned_channels: int = 0
    """> 0: constancy of learned features ``I + CNN(I)``, the CNN this many channels wide."""
    radius: int = 3
    """``cost-volume``: the matching window spans displacements ``-radius..radius`` px in x and y."""
    temperature: float = 10.0
    """``cost-volume``: softmax temperature over the windowed SSD costs, in grey-level^2."""


@dataclass(frozen=True)
class SmoothnessConfig:
    """Regulariser ``alpha^2 / 2 * sum w_pq psi(diff^2)`` on a neighbour ``stencil``; ``none`` for no term.

    ``learned``: pair weights from a CNN on frame 1 (edge-aware; start uniform).
    """

    kind: str = choice("pairwise", "pairwise", "none")
    alpha: float = 15.0
    penalty: PenaltyConfig = PenaltyConfig()
    stencil: str = choice("horn-schunck", *STENCILS)
    learned: bool = False


@dataclass(frozen=True)
class StepConfig:
    """Update operator: ``jacobi`` (block-preconditioned), ``sor`` (red-black Gauss-Seidel) or ``gradient``.

    ``learned`` wraps it: ``sizes`` (a learned scale per iteration), ``preconditioner`` (a learned
    per-pixel scale from frame 1) or ``gru`` (a ConvGRU correction, RAFT-style); each starts as
    the hand-tuned step.
    """

    kind: str = choice("jacobi", "jacobi", "sor", "gradient")
    relaxation: float = 1.0
    damping: float = 0.0
    step_size: float = 1e-3
    learned: str = choice("none", "none", "sizes", "preconditioner", "gru")


@dataclass(frozen=True)
class PyramidConfig:
    """Coarse-to-fine: at most ``levels`` levels ``scale`` apart, ``warps`` linearisations per level.

    ``learned_prefilter``: one learned normalised blur kernel per level (starts Gaussian).
    ``stop_warp_gradient``: when training, no gradient through the warp and linearisation point
    (RAFT's detach); the gradient still flows through the iterations.
    """

    levels: int = 1
    scale: float = 0.5
    warps: int = 1
    sigma: float = 1.0
    input_sigma: float = 0.0
    median_size: int = 0
    min_size: int = 16
    learned_prefilter: bool = False
    stop_warp_gradient: bool = False


@dataclass(frozen=True)
class SolverConfig:
    """``num_iters`` iterations per linearisation (``level_iters``: per level, finest first).

    ``unroll``: iterations and warps as straight-line code, not loops (slower to compile; on CPU,
    learned operators with convolutions train about 10x faster so).
    """

    num_iters: int = 100
    level_iters: tuple[int, ...] = ()
    gradient: str = choice("unrolled", "unrolled", "truncated", "implicit")
    remat: bool = False
    unroll: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Which network the scaffold is. ``scaffold``: built from the operator sections (classical
    methods and hybrids). The published networks read ``data.colour`` and the keys below;
    ``raft`` / ``raft-small`` / ``flowformer`` also ``solver`` (iterations, gradient mode, unroll).
    """

    kind: str = choice("scaffold", "scaffold", "raft", "raft-small", "flownet-s", "flownet-c", "pwc-net", "gmflow",
                       "gmflow-refine", "flowformer")
    correlation: str = choice("all-pairs", "all-pairs", "on-the-fly")
    """RAFT: the pooled all-pairs volume, or the same numbers computed per lookup window (memory
    linear in the pixels instead of quadratic)."""
    corr_levels: int = 4
    corr_radius: int = 0
    """RAFT lookup window radius; 0: the model's (4, or 3 for raft-small)."""
    padding: str = choice("sintel", "sintel", "kitti")
    """RAFT and GMFlow pad frames to multiples of 8 (16, or 32 refined): centred (sintel) or at the bottom (kitti)."""


@dataclass(frozen=True)
class MethodConfig:
    """A whole method: one section per operator."""

    data: DataConfig = DataConfig()
    smoothness: SmoothnessConfig = SmoothnessConfig()
    step: StepConfig = StepConfig()
    pyramid: PyramidConfig = PyramidConfig()
    solver: SolverConfig = SolverConfig()
    model: ModelConfig = ModelConfig()
    compute_dtype: str = choice("float32", *COMPUTE_DTYPES)
    """``bfloat16``: the networks' layers compute in bfloat16 with float32 parameters; flows,
    correlations, losses and the hand-tuned operators stay float32 (see ``unroll.precision``)."""


def _penalty(config: PenaltyConfig):
    return {"quadratic": Quadratic, "charbonnier": lambda: Charbonnier(config.eps, config.exponent)}[config.kind]()


def frame_channels(config: DataConfig) -> int:
    """Channels of the frames the method sees: 3 for colour, 1 for grey."""
    return 3 if config.colour else 1


def _data(config: DataConfig, rngs: nnx.Rngs):
    penalty = _penalty(config.penalty)
    data = {
        "brightness": lambda: BrightnessConstancy(penalty, config.weight, config.blend, config.gradient_weight),
        "windowed": lambda: WindowedBrightnessConstancy(config.window_sigma, penalty, config.weight, config.blend),
        "cost-volume": lambda: CostVolume(config.radius, config.window_sigma, config.temperature, penalty=penalty,
                                          weight=config.weight),
    }[config.kind]()
    if config.learned_channels > 0:
        data = LearnedFeatures(data, frame_channels(config), config.learned_channels, rngs=rngs)
    return data


def _smoothness(config: SmoothnessConfig, channels: int, rngs: nnx.Rngs):
    if config.kind == "none":
        return None
    weights = ContextEdgeWeights(half_stencil(config.stencil), channels, rngs=rngs) if config.learned else None
    return PairwiseSmoothness(config.alpha, _penalty(config.penalty), config.stencil, weights)


def _step(config: StepConfig, num_iters: int, channels: int, rngs: nnx.Rngs):
    step = {
        "jacobi": lambda: BlockJacobiStep(config.relaxation, config.damping),
        "sor": lambda: RedBlackStep(config.relaxation, config.damping),
        "gradient": lambda: GradientStep(config.step_size),
    }[config.kind]()
    return {
        "none": lambda: step,
        "sizes": lambda: LearnedStepSizes(step, num_iters),
        "preconditioner": lambda: LearnedPreconditioner(step, channels, rngs=rngs),
        "gru": lambda: RecurrentStep(step, channels, rngs=rngs),
    }[config.learned]()


def _gradient_mode(config: SolverConfig):
    return {
        "unrolled": lambda: Unrolled(config.remat),
        "truncated": Truncated,
        "implicit": Implicit,
    }[config.gradient]()


def _prefilter(config: PyramidConfig):
    if config.learned_prefilter:
        return LearnedPrefilter(config.levels, config.sigma, config.input_sigma)
    return GaussianPrefilter(config.sigma, config.input_sigma)


def build(config: MethodConfig, keep_trajectory: bool = False, seed: int = 0) -> nnx.Module:
    """The module described by ``config`` (``CoarseToFine``, or a network such as ``Raft``), mapping
    two frames ``(h, w, c)`` to a ``Solution``; ``seed`` initialises learned operators. Its network
    layers compute in ``config.compute_dtype``."""
    return set_compute_dtype(_module(config, keep_trajectory, seed), config.compute_dtype)


def _module(config: MethodConfig, keep_trajectory: bool, seed: int) -> nnx.Module:
    """``build`` before the compute dtype is set."""
    rngs = nnx.Rngs(seed)
    m = config.model
    networks = {
        "raft": lambda: raft(m.kind, config.solver.num_iters, _gradient_mode(config.solver), rngs=rngs,
                             keep_trajectory=keep_trajectory, unroll=config.solver.unroll, correlation=m.correlation,
                             corr_levels=m.corr_levels, corr_radius=m.corr_radius, pad_mode=m.padding),
        "flownet-s": lambda: FlowNetS(rngs=rngs, keep_trajectory=keep_trajectory),
        "flownet-c": lambda: FlowNetC(rngs=rngs, keep_trajectory=keep_trajectory),
        "pwc-net": lambda: PWCNet(rngs=rngs, keep_trajectory=keep_trajectory),
        "gmflow": lambda: GMFlow(rngs=rngs, scales=SCALES[m.kind], keep_trajectory=keep_trajectory,
                                  pad_mode=m.padding),
        "flowformer": lambda: flowformer(config.solver.num_iters, _gradient_mode(config.solver), rngs=rngs,
                                         keep_trajectory=keep_trajectory, unroll=config.solver.unroll,
                                         pad_mode=m.padding),
    }
    networks["raft-small"] = networks["raft"]
    networks["gmflow-refine"] = networks["gmflow"]
    if m.kind in networks:
        return networks[m.kind]()
    data = _data(config.data, rngs)
    frame = jax.ShapeDtypeStruct((8, 8, frame_channels(config.data)), jnp.float32)
    channels = jax.eval_shape(data.features, frame).shape[-1]  # what the context networks read
    energy = Energy(data, _smoothness(config.smoothness, channels, rngs))
    step = _step(config.step, max((config.solver.num_iters,) + config.solver.level_iters), channels, rngs)
    solver = UnrolledSolver(energy, step, config.solver.num_iters, _gradient_mode(config.solver), keep_trajectory,
                            config.solver.unroll)
    p = config.pyramid
    return CoarseToFine(solver, _prefilter(p), BilinearWarp(), p.levels, p.scale, p.warps, config.solver.level_iters,
                        p.median_size, p.min_size, p.stop_warp_gradient)


def min_frame_side(config: MethodConfig) -> int:
    """The smallest frame side the method accepts, in pixels."""
    if config.model.kind in ("raft", "raft-small"):
        return FACTOR * 2 ** (config.model.corr_levels - 1)  # the coarsest correlation level keeps 1 px
    if config.model.kind != "scaffold":
        return 1  # padded to the multiple the network needs
    return config.pyramid.min_size


def param_structure(config: MethodConfig) -> nnx.State:
    """The method's ``nnx.Param`` state as ``jax.ShapeDtypeStruct`` leaves: shapes, no initialisation."""
    return nnx.state(nnx.eval_shape(lambda: build(config)), nnx.Param)


def count_params(config: MethodConfig) -> int:
    """Number of learned parameters (scalars in ``nnx.Param`` leaves) of the method."""
    return param_count(param_structure(config))


def param_count(params) -> int:
    """Number of scalars in the arrays of the pytree ``params``."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


def _charbonnier(eps: float) -> PenaltyConfig:
    return PenaltyConfig("charbonnier", eps, 0.5)


#: The named classical methods. Intensities are on the 0..255 scale.
PRESETS: dict[str, MethodConfig] = {
    # Horn & Schunck (1981), with the practices of Sun, Roth & Black (2010): coarse-to-fine
    # warping and a median filter after each warp (which regularises too, so alpha is small).
    "horn-schunck": MethodConfig(
        smoothness=SmoothnessConfig(alpha=5.0),
        step=StepConfig("jacobi"),
        pyramid=PyramidConfig(levels=6, warps=3, input_sigma=1.0, median_size=5),
        solver=SolverConfig(num_iters=150),
    ),
    # Pyramidal, iterative Lucas & Kanade (1981): one Gauss-Newton solve per warp, derivatives
    # of the warped frame (forward-additive), median filter after each warp.
    "lucas-kanade": MethodConfig(
        data=DataConfig("windowed", window_sigma=4.0, blend=1.0),
        smoothness=SmoothnessConfig("none"),
        step=StepConfig("jacobi", damping=1.0),
        pyramid=PyramidConfig(levels=6, warps=5, input_sigma=1.0, median_size=5),
        solver=SolverConfig(num_iters=1),
    ),
    # Robust (Charbonnier ~ L1) data and total-variation smoothness, "Classic-C" style
    # (Sun, Roth & Black 2010): IRLS with red-black SOR, warping, 5x5 median after each warp.
    "tv-l1": MethodConfig(
        data=DataConfig(penalty=_charbonnier(1.0)),
        smoothness=SmoothnessConfig(alpha=2.2, penalty=_charbonnier(0.2), stencil="4-neighbour"),
        step=StepConfig("sor", relaxation=1.8),
        pyramid=PyramidConfig(levels=6, warps=3, median_size=5),
        solver=SolverConfig(num_iters=20),
    ),
}


#: RAFT's published recipe: 12 iterations, truncated gradient (coordinates detached), colour input.
_RAFT = MethodConfig(data=DataConfig(colour=True), solver=SolverConfig(num_iters=12, gradient="truncated"))

#: The named networks (random weights until trained or converted, see ``unroll convert``).
MODELS: dict[str, MethodConfig] = {
    "raft": replace(_RAFT, model=ModelConfig("raft")),
    "raft-small": replace(_RAFT, model=ModelConfig("raft-small")),
    **{name: MethodConfig(data=DataConfig(colour=True), model=ModelConfig(name))
       for name in ("flownet-s", "flownet-c", "pwc-net", "gmflow", "gmflow-refine")},
    "flowformer": replace(_RAFT, model=ModelConfig("flowformer")),
}

#: Every named method: the classical presets and the networks.
METHODS: dict[str, MethodConfig] = PRESETS | MODELS


def preset(name: str) -> MethodConfig:
    """The config of a named method or model; raises ``ConfigError`` listing the names when unknown."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]

