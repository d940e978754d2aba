"""One-operator-at-a-time ablations: which learned operator buys how much.

From an experiment whose method is hand-tuned, ``run_ablation`` trains (with the same data,
budget and seed) and evaluates: everything hand-tuned, each operator of ``ablation`` learned
alone, and all of them learned together. Each variant is an ordinary training run in
``workdir/<variant>``, so finished runs are reused and interrupted ones resume. The results go
to ``workdir/ablation.md``, ``ablation.csv`` and a bar chart ``ablation.png``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from unroll.config import ConfigError, override
from unroll.estimator import FlowEstimator
from unroll.experiment import ExperimentConfig
from unroll.methods import count_params
from unroll.files import atomic_write_bytes
from unroll.trainer import RESULT_FILE, claim_workdir, summarise, train, write_json
from unroll.validation import validate, validation_sets

HAND_TUNED, ALL_LEARNED = "hand-tuned", "all learned"
#: The metrics of each validation set in the table.
_METRICS = ("epe", "px1", "px3", "px5")


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


def _folder(name: str) -> str:
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


def run_ablation(config: ExperimentConfig, workdir: str | Path, progress: bool = True) -> list[dict]:
    """Run (or reuse) every variant and write the tables and the chart; returns the rows."""
    workdir = Path(workdir)
    rows = []
    for name, variant in variants(config).items():
        result = run_variant(variant, workdir / _folder(name), progress)
        row = {"variant": name, "params": result["params"], "train_s": result["train_seconds"]}
        for set_name, metrics in sorted(result["validation"].items()):
            row |= {f"{set_name}_{k}": metrics[k] for k in _METRICS}
        rows.append(row)
    atomic_write_bytes(workdir / "ablation.md", markdown(rows).encode())
    atomic_write_bytes(workdir / "ablation.csv", _csv(rows).encode())
    bar_chart(rows, workdir / "ablation.png")
    return rows


def _headings(rows: list[dict]) -> dict[str, str]:
    names = {"variant": "variant", "params": "params", "train_s": "train s"}
    for key in rows[0]:
        if key not in names:
            set_name, metric = key.rsplit("_", 1)
            names[key] = f"{set_name} {'EPE' if metric == 'epe' else metric + ' %'}"
    return names


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (EPE in px, pxN = % of pixels with error over N px)."""
    headings = _headings(rows)
    lines = ["| " + " | ".join(headings.values()) + " |", "|" + "---|" * len(headings)]
    for row in rows:
        cells = [row[k] if isinstance(row[k], str) else f"{row[k]:,}" if isinstance(row[k], int)
                 else f"{row[k]:.3f}" if k.endswith("epe") else f"{row[k]:.1f}" for k in headings]
        lines.append("| " + " | ".join(cells) + " |")
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
        bars = ax.bar(positions, [row[key] for row in rows], width, label=key.rsplit("_", 1)[0])
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
