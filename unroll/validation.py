"""The validation sets of an experiment and their evaluation.

Two sets: held-out synthetic pairs from the training generator's distribution, and the real
sequences of a folder (e.g. ``../shared/data``), each evaluated with ``unroll.evaluation``.
"""

from __future__ import annotations

import os

from unroll.data.datasets import FORMATS, Sample
from unroll.data.synthetic import SyntheticDataset
from unroll.estimator import FlowEstimator
from unroll.evaluation import Report, evaluate
from unroll.experiment import ExperimentConfig


def synthetic_samples(config: ExperimentConfig) -> list[Sample]:
    """``validation.synthetic_pairs`` pairs drawn with ``validation.synthetic_seed`` (named
    ``synthetic/<i>``), at the size of the training data's generator."""
    data = SyntheticDataset(config.data.synthetic, config.validation.synthetic_seed,
                            config.validation.synthetic_pairs)
    return [Sample(f"synthetic/{i}", p["frame1"], p["frame2"], p["flow"], p["valid"], p["occluded"])
            for i, p in enumerate(data[i] for i in range(len(data)))]


def validation_sets(config: ExperimentConfig) -> dict[str, tuple[list[Sample] | object, str, int | None]]:
    """``{name: (samples, data format, limit)}`` for ``synthetic`` and, if its folder exists, ``real``."""
    sets = {}
    if config.validation.synthetic_pairs:
        sets["synthetic"] = (synthetic_samples(config), "synthetic", None)
    folder = config.validation.real_data
    if folder and os.path.isdir(folder):
        limit = config.validation.real_limit or None
        sets["real"] = (FORMATS[config.validation.real_format](folder), config.validation.real_format, limit)
    return sets


def validate(estimator: FlowEstimator, sets: dict, progress: bool = False) -> dict[str, Report]:
    """Evaluate ``estimator`` on every set of ``validation_sets``."""
    return {name: evaluate(estimator, samples, data_format, limit, desc=f"validate {name}", progress=progress)
            for name, (samples, data_format, limit) in sets.items()}
