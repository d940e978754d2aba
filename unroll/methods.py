"""The method configuration schema and its builder: one place that maps names to operators.

A ``MethodConfig`` names, per operator, which implementation to use and its numbers. ``build``
turns it into a ``CoarseToFine`` module. Swapping one operator is one key:
``--set step.kind=jacobi``. Dictionaries (not string lookups of attributes) map every name to
its class, so a typo fails when the config is checked and grep finds every use.
"""

from __future__ import annotations

from dataclasses import dataclass

from classical.data_terms import BrightnessConstancy, WindowedBrightnessConstancy
from classical.penalties import Charbonnier, Quadratic
from classical.prefilters import GaussianPrefilter
from classical.smoothness import STENCILS, PairwiseSmoothness
from classical.steps import BlockJacobiStep, GradientStep, RedBlackStep
from unroll.config import ConfigError, choice
from unroll.energy import Energy
from unroll.gradients import Implicit, Truncated, Unrolled
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
    """Data term. ``brightness``: pointwise constancy; ``windowed``: Gaussian-window (Lucas-Kanade).

    ``gradient_weight`` > 0 adds gradient constancy (pointwise term only); ``colour`` uses the
    three colour channels instead of grey.
    """

    kind: str = choice("brightness", "brightness", "windowed")
    penalty: PenaltyConfig = PenaltyConfig()
    weight: float = 1.0
    blend: float = 0.5
    gradient_weight: float = 0.0
    window_sigma: float = 2.0
    colour: bool = False


@dataclass(frozen=True)
class SmoothnessConfig:
    """Regulariser ``alpha^2 / 2 * sum w_pq psi(diff^2)`` on a neighbour ``stencil``; ``none`` for no term."""

    kind: str = choice("pairwise", "pairwise", "none")
    alpha: float = 15.0
    penalty: PenaltyConfig = PenaltyConfig()
    stencil: str = choice("horn-schunck", *STENCILS)


@dataclass(frozen=True)
class StepConfig:
    """Update operator: ``jacobi`` (block-preconditioned), ``sor`` (red-black Gauss-Seidel) or ``gradient``."""

    kind: str = choice("jacobi", "jacobi", "sor", "gradient")
    relaxation: float = 1.0
    damping: float = 0.0
    step_size: float = 1e-3


@dataclass(frozen=True)
class PyramidConfig:
    """Coarse-to-fine: at most ``levels`` levels ``scale`` apart, ``warps`` linearisations per level."""

    levels: int = 1
    scale: float = 0.5
    warps: int = 1
    sigma: float = 1.0
    input_sigma: float = 0.0
    median_size: int = 0
    min_size: int = 16


@dataclass(frozen=True)
class SolverConfig:
    """``num_iters`` iterations per linearisation (``level_iters``: per level, finest first)."""

    num_iters: int = 100
    level_iters: tuple[int, ...] = ()
    gradient: str = choice("unrolled", "unrolled", "truncated", "implicit")
    remat: bool = False


@dataclass(frozen=True)
class MethodConfig:
    """A whole method: one section per operator."""

    data: DataConfig = DataConfig()
    smoothness: SmoothnessConfig = SmoothnessConfig()
    step: StepConfig = StepConfig()
    pyramid: PyramidConfig = PyramidConfig()
    solver: SolverConfig = SolverConfig()


def _penalty(config: PenaltyConfig):
    return {"quadratic": Quadratic, "charbonnier": lambda: Charbonnier(config.eps, config.exponent)}[config.kind]()


def _data(config: DataConfig):
    penalty = _penalty(config.penalty)
    return {
        "brightness": lambda: BrightnessConstancy(penalty, config.weight, config.blend, config.gradient_weight),
        "windowed": lambda: WindowedBrightnessConstancy(config.window_sigma, penalty, config.weight, config.blend),
    }[config.kind]()


def _smoothness(config: SmoothnessConfig):
    return {
        "pairwise": lambda: PairwiseSmoothness(config.alpha, _penalty(config.penalty), config.stencil),
        "none": lambda: None,
    }[config.kind]()


def _step(config: StepConfig):
    return {
        "jacobi": lambda: BlockJacobiStep(config.relaxation, config.damping),
        "sor": lambda: RedBlackStep(config.relaxation, config.damping),
        "gradient": lambda: GradientStep(config.step_size),
    }[config.kind]()


def _gradient_mode(config: SolverConfig):
    return {
        "unrolled": lambda: Unrolled(config.remat),
        "truncated": Truncated,
        "implicit": Implicit,
    }[config.gradient]()


def build(config: MethodConfig, keep_trajectory: bool = False) -> CoarseToFine:
    """The ``CoarseToFine`` module described by ``config``."""
    energy = Energy(_data(config.data), _smoothness(config.smoothness))
    solver = UnrolledSolver(energy, _step(config.step), config.solver.num_iters, _gradient_mode(config.solver),
                            keep_trajectory)
    p = config.pyramid
    return CoarseToFine(solver, GaussianPrefilter(p.sigma, p.input_sigma), BilinearWarp(), p.levels, p.scale,
                        p.warps, config.solver.level_iters, p.median_size, p.min_size)


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


def preset(name: str) -> MethodConfig:
    """The config of a named method; raises ``ConfigError`` listing the names when unknown."""
    if name not in PRESETS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]

