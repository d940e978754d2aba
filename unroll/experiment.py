"""An experiment: one file that describes a method, its training data, optimiser, validation and seed.

A TOML (or JSON) file names a ``base`` method (a preset: ``horn-schunck``, ``tv-l1``, ...) and
overrides any key of any section; ``unroll config --experiment FILE`` prints every key::

    base = "horn-schunck"
    seed = 0

    [method.step]
    learned = "gru"

    [optim]
    steps = 300

    [data]
    batch_size = 4

Unknown keys and values of the wrong type fail when the file is read, naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from unroll.config import ConfigError, choice, flat_keys, override, read_file, update
from unroll.data.datasets import FORMATS
from unroll.data.pipeline import TrainDataConfig
from unroll.methods import PRESETS, MethodConfig, preset
from unroll.training import OptimConfig


@dataclass(frozen=True)
class RunConfig:
    """Bookkeeping of a training run, counted in steps.

    ``checkpoint_every``: save parameters, optimiser and data state (and always at the end);
    ``keep_checkpoints``: how many recent ones to keep; ``log_every``: write a metrics line;
    ``validate_every``: run validation (0: only at the end).
    """

    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    validate_every: int = 0


@dataclass(frozen=True)
class ValidationConfig:
    """What a run is measured on.

    ``synthetic_pairs`` held-out pairs from the training generator's distribution (drawn with
    ``synthetic_seed``, which must differ from the experiment's seed), and the real sequences in
    ``real_data`` (a ``real_format`` folder; skipped when the folder does not exist;
    ``real_limit`` > 0 takes the first pairs only).
    """

    synthetic_pairs: int = 8
    synthetic_seed: int = 1_000_000
    real_data: str = "../shared/data"
    real_format: str = choice("middlebury", *FORMATS)
    real_limit: int = 0


@dataclass(frozen=True)
class AblationConfig:
    """For ``unroll ablate``: per operator, the ``key=value`` overrides that make it learned (an
    empty list leaves the operator out of the study)."""

    data: tuple[str, ...] = ("method.data.learned_channels=8",)
    smoothness: tuple[str, ...] = ("method.smoothness.learned=true",)
    step: tuple[str, ...] = ("method.step.learned=sizes",)
    prefilter: tuple[str, ...] = ("method.pyramid.learned_prefilter=true",)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. ``method`` starts from the preset named by ``base``."""

    base: str = "horn-schunck"
    seed: int = 0
    method: MethodConfig = PRESETS["horn-schunck"]
    optim: OptimConfig = OptimConfig()
    data: TrainDataConfig = TrainDataConfig()
    run: RunConfig = RunConfig()
    validation: ValidationConfig = ValidationConfig()
    ablation: AblationConfig = AblationConfig()


def _check(config: ExperimentConfig) -> ExperimentConfig:
    positive = {"optim.steps": config.optim.steps, "optim.accumulate": config.optim.accumulate,
                "run.checkpoint_every": config.run.checkpoint_every,
                "run.keep_checkpoints": config.run.keep_checkpoints, "run.log_every": config.run.log_every,
                "data.batch_size": config.data.batch_size}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"bad value {value} for {key}: must be >= 1")
    non_negative = {"seed": config.seed, "run.validate_every": config.run.validate_every,
                    "validation.synthetic_pairs": config.validation.synthetic_pairs,
                    "validation.real_limit": config.validation.real_limit, "data.prefetch": config.data.prefetch}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"bad value {value} for {key}: must be >= 0")
    augment = {k: v for k, v in flat_keys(config.data.augment).items()
               if v != flat_keys(TrainDataConfig().augment)[k]}
    if config.data.source == "synthetic" and augment:
        raise ConfigError(f"data.augment.{', data.augment.'.join(sorted(augment))}: augmentation applies to data sets "
                          "(data.source); the synthetic generator draws its pairs at data.synthetic.size, "
                          "with its own random motions: set those instead")
    if config.validation.synthetic_seed == config.seed:
        raise ConfigError(f"validation.synthetic_seed must differ from seed ({config.seed}): validation pairs "
                          "would repeat training pairs")
    return config


#: FlowNet's and PWC-Net's multi-scale loss weights (0.32 at 1/64 ... 0.005 at 1/4), coarse to fine.
_MULTISCALE = (0.32, 0.08, 0.02, 0.01, 0.005)

#: The published training recipe of a network, the ``optim`` defaults when it is the ``base``
#: (the others take ``OptimConfig``'s, RAFT's). FlowNet and PWC-Net: Adam at 1e-4, constant over
#: any budget this side of their first 300k / 400k steps, weight decay 4e-4, end-point error
#: weighted per scale; GMFlow: RAFT's recipe with gamma 0.9 over its predictions (two, four refined);
#: FlowFormer: RAFT's recipe at the learning rate 2.5e-4.
RECIPES: dict[str, OptimConfig] = {
    **{name: OptimConfig(learning_rate=1e-4, weight_decay=4e-4, schedule="constant", loss="epe",
                         loss_weights=_MULTISCALE) for name in ("flownet-s", "flownet-c", "pwc-net")},
    **{name: OptimConfig(gamma=0.9) for name in ("gmflow", "gmflow-refine")},
    "flowformer": OptimConfig(learning_rate=2.5e-4),
}


def experiment(mapping: dict | None = None, overrides: list[str] = (), source: str = "") -> ExperimentConfig:
    """The experiment described by ``mapping`` (a parsed file) and ``key=value`` ``overrides``.

    The ``base`` key (from the overrides, else the mapping, else ``horn-schunck``) picks the
    preset that the ``method`` section starts from. ``source`` (a file name) prefixes the
    errors in ``mapping``.
    """
    mapping = dict(mapping or {})
    base = mapping.get("base", ExperimentConfig.base)
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        if key.strip() == "base":
            base = value.strip()
    if not isinstance(base, str):
        raise ConfigError(f"bad value {base!r} for base: expected str")
    try:
        config = ExperimentConfig(base=base, method=preset(base), optim=RECIPES.get(base, OptimConfig()))
        config = update(config, {k: v for k, v in mapping.items() if k != "base"})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None
    config = override(config, [a for a in overrides if a.partition("=")[0].strip() != "base"])
    return _check(config)


def load_experiment(path: str | os.PathLike, overrides: list[str] = ()) -> ExperimentConfig:
    """The experiment in the ``.toml`` / ``.json`` file ``path``, with ``overrides`` applied."""
    return experiment(read_file(path), overrides, os.fspath(path))
