"""One-operator-at-a-time ablations: which learned operator buys how much.

From an experiment whose method is hand-tuned, ``run_ablation`` trains (with the same data,
budget and seed) and evaluates: everything hand-tuned, each operator of ``ablation`` learned
alone, and all of them learned together: a study (``unroll.study``) whose tables and chart are
``workdir/ablation.md``, ``ablation.csv`` and ``ablation.png``.
"""

from __future__ import annotations

from pathlib import Path

from unroll.config import ConfigError, override
from unroll.experiment import ExperimentConfig
from unroll.methods import count_params
from unroll.study import run_study

HAND_TUNED, ALL_LEARNED = "hand-tuned", "all learned"


def variants(config: ExperimentConfig) -> dict[str, ExperimentConfig]:
    """``{name: experiment}``: hand-tuned, each operator learned alone, all learned."""
    learned = count_params(config.method)
    if learned:
        raise ConfigError("the method of an ablation must be hand-tuned (its [ablation] section makes operators "
                          f"learned), but it has {learned} learned parameters")
    ablation = config.ablation
    operators = {name: tuple(getattr(ablation, name)) for name in ("data", "smoothness", "step", "prefilter")}
    operators = {name: sets for name, sets in operators.items() if sets}
    out = {HAND_TUNED: config}
    out |= {f"learned {name}": override(config, list(sets)) for name, sets in operators.items()}
    out[ALL_LEARNED] = override(config, [s for sets in operators.values() for s in sets])
    return out


def run_ablation(config: ExperimentConfig, workdir: str | Path, progress: bool = True) -> list[dict]:
    """Run (or reuse) every variant and write ``workdir/ablation.{md,csv,png}``; returns the rows."""
    return run_study(variants(config), workdir, "ablation", progress)
