"""Studies: several named experiments trained on the same budget, compared in one table.

A study is ``{name: ExperimentConfig}``. ``run_study`` trains each (or, for a method with nothing
to learn, only evaluates it) in ``workdir/<name>``, so finished runs are reused and interrupted
ones resume, and writes ``<table>.md``, ``<table>.csv`` and a bar chart ``<table>.png``: per
variant the parameter count, training seconds, and per validation set the EPE, px1/3/5 and the
mean flow time per pair (compilation excluded). Over several ``seeds`` each variant is trained once
per seed and the table gives the mean and standard deviation of every number.

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
import statistics
from pathlib import Path
from typing import Sequence

from unroll.config import ConfigError, override, read_file
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
              progress: bool = True, seeds: Sequence[int] = ()) -> list[dict]:
    """Run (or reuse) every variant, write ``workdir/<table>.{md,csv,png}`` and return the rows.

    With ``seeds``, a variant with something to learn is trained once per seed (its ``seed``
    replaced) in ``workdir/<name>/seed-<seed>``, and its row holds the mean over those runs of
    every number, with the sample standard deviation of each metric as ``<key>_sd`` (the Markdown
    shows ``mean ± sd``, the chart error bars, the CSV every run); a hand-tuned variant, whose
    result does not depend on the seed, is evaluated once. The runs go seed by seed, so an
    interrupted study has whole studies of its first seeds.
    """
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {list(seeds)} repeat a seed")
    workdir = Path(workdir)
    runs = list(_runs(variants, workdir, seeds))
    seed_by_seed = sorted(runs, key=lambda run: seeds.index(run[1]) if run[1] != "" else 0)
    results = {(name, seed): run_variant(config, run_dir, progress) for name, seed, config, run_dir in seed_by_seed}
    rows = []
    for name, seed, _, _ in runs:
        result = results[name, seed]
        row = {"variant": name} | ({"seed": seed} if seeds else {})
        row |= {"params": result["params"], "train_s": result["train_seconds"]}
        for set_name, metrics in sorted(result["validation"].items()):
            row |= {f"{set_name}_{k}": metrics[k] for k in METRICS}
        rows.append(row)
    table_rows = _over_seeds(rows) if seeds else rows
    atomic_write_bytes(workdir / f"{table}.md", markdown(table_rows).encode())
    atomic_write_bytes(workdir / f"{table}.csv", _csv(rows).encode())
    bar_chart(table_rows, workdir / f"{table}.png")
    return table_rows


def _runs(variants: dict[str, ExperimentConfig], workdir: Path, seeds: Sequence[int]):
    """``(name, seed, experiment, folder)`` of every run, variant by variant (seed ``""``: the
    experiment's own)."""
    for name, variant in variants.items():
        run_dir = workdir / folder(name)
        if not seeds or count_params(variant.method) == 0:
            yield name, "", variant, run_dir
        else:
            for seed in seeds:
                yield name, seed, override(variant, [f"seed={seed}"]), run_dir / f"seed-{seed}"


def _over_seeds(runs: list[dict]) -> list[dict]:
    """One row per variant: ``runs`` (how many), the mean of every number over its runs, and the
    sample standard deviation ``<key>_sd`` of each metric where there are several runs."""
    rows = {}
    for run in runs:
        rows.setdefault(run["variant"], []).append(run)
    out = []
    for name, group in rows.items():
        row = {"variant": name, "runs": len(group)}
        for key in group[0]:
            if key in ("variant", "seed"):
                continue
            values = [run[key] for run in group]
            row[key] = values[0] if key == "params" else statistics.fmean(values)
            if len(values) > 1 and key.endswith(tuple("_" + m for m in METRICS)):
                row[key + "_sd"] = statistics.stdev(values)
        out.append(row)
    return out


def _split(key: str) -> tuple[str, str]:
    """``"real_time_s"`` -> ``("real", "time_s")``."""
    metric = next(m for m in METRICS if key.endswith("_" + m))
    return key[: -len(metric) - 1], metric


def _headings(rows: list[dict]) -> dict[str, str]:
    names = {"variant": "variant", "runs": "runs", "params": "params", "train_s": "train s"}
    names = {key: heading for key, heading in names.items() if key in rows[0]}
    for key in rows[0]:
        if key not in names and not key.endswith("_sd"):
            set_name, metric = _split(key)
            names[key] = f"{set_name} {METRICS[metric]}"
    return names


def _number(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if key.endswith(("_epe", "_time_s")) else f"{value:.1f}"


def _cell(row: dict, key: str) -> str:
    """``row[key]``, followed by ``± sd`` where the row has the key's standard deviation."""
    sd = row.get(key + "_sd")
    return _number(key, row[key]) + ("" if sd is None else " ± " + _number(key, sd))


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (EPE in px, pxN = % of pixels with error over N px, time s =
    mean seconds per pair; ``mean ± sd`` over the runs of a row where it has ``_sd`` keys)."""
    headings = _headings(rows)
    lines = ["| " + " | ".join(headings.values()) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(_cell(row, k) for k in headings) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def bar_chart(rows: list[dict], path: Path) -> None:
    """Grouped bars of each validation set's EPE per variant (with ``_sd`` error bars where the
    rows have them), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [k for k in rows[0] if k.endswith("_epe")]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6), dpi=120)
    width = 0.8 / len(sets)
    for k, key in enumerate(sets):
        positions = [i + (k - (len(sets) - 1) / 2) * width for i in range(len(rows))]
        spread = [row.get(key + "_sd", 0.0) for row in rows]
        bars = ax.bar(positions, [row[key] for row in rows], width, label=_split(key)[0],
                      yerr=spread if any(spread) else None, capsize=2)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(rows)), [row["variant"] for row in rows], rotation=20, ha="right")
    ax.set_ylabel("mean EPE (px)")
    ax.set_ylim(0, 1.1 * max(row[key] + row.get(key + "_sd", 0.0) for row in rows for key in sets))
    ax.legend(frameon=False, ncol=len(sets), loc="lower right", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
