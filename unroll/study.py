"""Studies: several named experiments trained on the same budget, compared in one table.

A study is ``{name: ExperimentConfig}``. ``run_study`` trains each (or, for a method with nothing
to learn, only evaluates it) in ``workdir/<name>``, so finished runs are reused and interrupted
ones resume, and writes ``<table>.md``, ``<table>.csv`` and a bar chart ``<table>.png``: per
variant the parameter count, training seconds, and per validation set the EPE, px1/3/5 and the
mean flow time per pair (compilation excluded).

Two kinds of study build on it: ``unroll ablate`` (``unroll.ablation``: one operator learned at a
time) and ``unroll study`` (a file that lists its variants, see ``load_study``), e.g. the lineage
study of every method under equal conditions in ``experiments/lineage.toml``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from unroll.config import ConfigError, read_file
from unroll.estimator import FlowEstimator
from unroll.experiment import ExperimentConfig, experiment
from unroll.files import atomic_write_bytes
from unroll.methods import count_params
from unroll.trainer import RESULT_FILE, claim_workdir, summarise, train, write_json
from unroll.validation import validate, validation_sets

#: The metrics of each validation set in the table, with their headings.
METRICS = {"epe": "EPE", "px1": "px1 %", "px3": "px3 %", "px5": "px5 %", "time_s": "time s"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+()-]*")


def load_study(path: str | os.PathLike, overrides: list[str] = ()) -> dict[str, ExperimentConfig]:
    """The variants of the study file ``path``: ``{name: experiment}``, in the file's order.

    The file is an experiment file (the keys every variant shares: seed, data, optim steps,
    validation, ...) plus a ``[variants]`` table of ``name = ["key=value", ...]``: each variant is
    the shared experiment with its own overrides (``base=...`` picks its method and, for a
    network, its paper's optimiser recipe), then ``overrides`` (from the command line, for all).
    """
    mapping = read_file(path)
    listed = mapping.pop("variants", None)
    if not isinstance(listed, dict) or not listed:
        raise ConfigError(f"{path}: a study needs a [variants] table of name = [\"key=value\", ...]")
    variants = {}
    for name, assignments in listed.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{path}: bad variant name {name!r} (letters, digits, spaces and ._+()- only)")
        if not isinstance(assignments, list) or not all(isinstance(a, str) for a in assignments):
            raise ConfigError(f"{path}: variants.{name} must be a list of \"key=value\" strings")
        try:
            variants[name] = experiment(mapping, [*assignments, *overrides], os.fspath(path))
        except ConfigError as e:
            raise ConfigError(f"variants.{name}: {e}") from None
    return variants


def folder(name: str) -> str:
    """The run folder of a variant."""
    return name.replace(" ", "-")


def _evaluate_hand_tuned(config: ExperimentConfig, workdir: Path) -> dict:
    """The result of a method with nothing to learn: validation only, no training."""
    estimator = FlowEstimator(config.method, seed=config.seed)
    result = {"params": 0, "steps": 0, "train_seconds": 0.0,
              "validation": summarise(validate(estimator, validation_sets(config)))}
    write_json(workdir / RESULT_FILE, result)
    return result


def run_variant(config: ExperimentConfig, workdir: Path, progress: bool = True) -> dict:
    """The result of one variant: reused when ``workdir`` holds a finished run of ``config``."""
    claim_workdir(workdir, config)
    if (workdir / RESULT_FILE).exists():
        return json.loads((workdir / RESULT_FILE).read_text())
    if count_params(config.method) == 0:
        return _evaluate_hand_tuned(config, workdir)
    return train(config, workdir, progress)


def run_study(variants: dict[str, ExperimentConfig], workdir: str | Path, table: str = "study",
              progress: bool = True) -> list[dict]:
    """Run (or reuse) every variant, write ``workdir/<table>.{md,csv,png}`` and return the rows."""
    workdir = Path(workdir)
    rows = []
    for name, variant in variants.items():
        result = run_variant(variant, workdir / folder(name), progress)
        row = {"variant": name, "params": result["params"], "train_s": result["train_seconds"]}
        for set_name, metrics in sorted(result["validation"].items()):
            row |= {f"{set_name}_{k}": metrics[k] for k in METRICS}
        rows.append(row)
    atomic_write_bytes(workdir / f"{table}.md", markdown(rows).encode())
    atomic_write_bytes(workdir / f"{table}.csv", _csv(rows).encode())
    bar_chart(rows, workdir / f"{table}.png")
    return rows


def _split(key: str) -> tuple[str, str]:
    """``"real_time_s"`` -> ``("real", "time_s")``."""
    metric = next(m for m in METRICS if key.endswith("_" + m))
    return key[: -len(metric) - 1], metric


def _headings(rows: list[dict]) -> dict[str, str]:
    names = {"variant": "variant", "params": "params", "train_s": "train s"}
    for key in rows[0]:
        if key not in names:
            set_name, metric = _split(key)
            names[key] = f"{set_name} {METRICS[metric]}"
    return names


def _cell(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if key.endswith(("_epe", "_time_s")) else f"{value:.1f}"


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (EPE in px, pxN = % of pixels with error over N px, time s =
    mean seconds per pair)."""
    headings = _headings(rows)
    lines = ["| " + " | ".join(headings.values()) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(_cell(k, row[k]) for k in headings) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def bar_chart(rows: list[dict], path: Path) -> None:
    """Grouped bars of each validation set's EPE per variant, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [k for k in rows[0] if k.endswith("_epe")]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6), dpi=120)
    width = 0.8 / len(sets)
    for k, key in enumerate(sets):
        positions = [i + (k - (len(sets) - 1) / 2) * width for i in range(len(rows))]
        bars = ax.bar(positions, [row[key] for row in rows], width, label=_split(key)[0])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(rows)), [row["variant"] for row in rows], rotation=20, ha="right")
    ax.set_ylabel("mean EPE (px)")
    ax.set_ylim(0, 1.1 * max(row[key] for row in rows for key in sets))
    ax.legend(frameon=False, ncol=len(sets), loc="lower right", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
