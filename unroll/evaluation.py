"""Evaluate a flow estimator on samples with ground truth, with each benchmark's conventions.

Used by ``unroll eval``, by validation during training and by ablation studies.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from unroll import distributed
from unroll.data.datasets import Sample, occlusion_split
from unroll.errors import InputError
from unroll.estimator import FlowEstimator
from unroll.metrics import flow_metrics, valid_mask

#: Columns of an evaluation table: result key (a ``flow_metrics`` key, or ``time_s``) and heading.
COLUMNS = {"epe": "EPE", "aae": "AAE", "px1": "px1 %", "px3": "px3 %", "px5": "px5 %",
           "fl_all": "Fl-all %", "time_s": "time s"}
METRICS = [k for k in COLUMNS if k != "time_s"]
#: Extra columns for data with occlusion masks (Sintel, KITTI, synthetic): EPE on the pixels
#: visible in both frames and on those occluded in frame 2.
SPLIT_COLUMNS = {"epe_noc": "EPE noc", "epe_occ": "EPE occ"}

#: Per data format, the metrics whose mean pools the pixels of all samples, as the benchmark
#: does; the others are averaged over the samples. Sintel: EPE all / matched / unmatched over
#: every pixel of the set; KITTI (and HD1K, in its format): EPE per image, Fl-all over all valid
#: pixels.
_PERCENTAGES = ("px1", "px3", "px5", "fl_all")
POOLED: dict[str, tuple[str, ...]] = {
    "middlebury": (),
    "sintel": ("epe", "aae", *_PERCENTAGES, *SPLIT_COLUMNS),
    "kitti": _PERCENTAGES,
    "chairs": (),
    "things": (),
    "hd1k": _PERCENTAGES,
    "synthetic": (),
}


class Report(NamedTuple):
    """Per-sample rows ``{name: {metric: value}}`` (with ``time_s``, the flow seconds excluding
    compilation), their benchmark ``mean`` and the seconds spent compiling."""

    rows: dict[str, dict]
    mean: dict
    compile_s: float

    def columns(self) -> dict[str, str]:
        """The table columns this report has values for."""
        return ({k: COLUMNS[k] for k in METRICS} | {k: h for k, h in SPLIT_COLUMNS.items() if k in self.mean}
                | {"time_s": COLUMNS["time_s"]})

    def table(self) -> str:
        """The rows and their mean as a fixed-width text table."""
        rows = self.rows | {"mean": self.mean}
        columns = self.columns()
        width = max(len("sequence"), *map(len, rows))
        lines = [f"{'sequence':<{width}}" + "".join(f"{h:>10}" for h in columns.values())]
        for name, row in rows.items():
            lines.append(f"{name:<{width}}" + "".join(f"{'-':>10}" if row[k] is None else f"{row[k]:>10.3f}"
                                                      for k in columns))
        return "\n".join(lines)


def sample_metrics(flow: np.ndarray, sample: Sample) -> tuple[dict, dict]:
    """The metrics of one sample, and per metric the number of pixels it was measured on.

    With occlusion masks, ``epe_noc`` and ``epe_occ`` too (``None`` where the sample has no such pixel).
    """
    metrics = flow_metrics(flow, sample.flow, sample.valid)
    row = {k: metrics[k] for k in METRICS}
    counts = dict.fromkeys(row, metrics["n_valid"])
    known = valid_mask(sample.flow)
    for part, mask in occlusion_split(sample).items():
        key = f"epe_{part}"
        counts[key] = int(np.count_nonzero(mask & known))
        row[key] = flow_metrics(flow, sample.flow, mask)["epe"] if counts[key] else None
    return row, counts


def mean_metrics(rows: dict[str, dict], counts: dict[str, dict], pooled: tuple[str, ...]) -> dict:
    """Per key, the mean over the samples, weighted by pixel counts for the keys in ``pooled``."""
    mean = {}
    for key in next(iter(rows.values())):
        names = [name for name, row in rows.items() if row[key] is not None]
        values = [rows[name][key] for name in names]
        if not values:
            mean[key] = None
        elif key in pooled:
            weights = [counts[name][key] for name in names]
            mean[key] = float(np.dot(values, weights) / np.sum(weights))
        else:
            mean[key] = float(np.mean(values))
    return mean


def evaluate(estimator: FlowEstimator, samples: Sequence[Sample], data_format: str = "middlebury",
             limit: int | None = None, desc: str = "eval", progress: bool = True, batch: int = 1) -> Report:
    """Run ``estimator`` on every sample (the first ``limit``) and measure it; the mean follows
    ``POOLED[data_format]``.

    ``samples`` is any sequence of ``Sample`` (a dataset reader, or a list); each is loaded once.
    Errors in a sample name its files where ``samples`` is a dataset reader, else its name.
    ``batch`` > 1: pairs of one frame size run ``batch`` at a time, split over this process's
    devices (``batch`` must be a multiple of their count; a size's last, smaller batch is padded
    to a multiple of it, see ``FlowEstimator.timed_batch``), each row's time being its batch's
    time over its pairs. The flows are those of ``batch=1`` up to float rounding.
    """
    pairs = getattr(samples, "pairs", None)
    compiled_before = sum(estimator.compile_seconds.values())
    if batch < 1:
        raise InputError(f"batch {batch}: must be >= 1")
    mesh = None if batch == 1 else distributed.mesh(jax.local_devices())
    if mesh is not None and batch % mesh.size:
        raise InputError(f"batch {batch}: must be a multiple of the device count {mesh.size} to split evenly")
    measured = {}  # sample index -> (name, row, pixel counts)
    pending: dict[tuple, list] = {}  # frame size -> [(index, sample, names)] waiting for a batch

    def measure(index: int, sample: Sample, flow: np.ndarray, flow_s: float) -> None:
        row, counts = sample_metrics(flow, sample)
        measured[index] = sample.name, row | {"time_s": flow_s}, counts

    def run(group: list) -> None:
        flows, _, flow_s = estimator.timed_batch([s.frame1 for _, s, _ in group], [s.frame2 for _, s, _ in group],
                                                 mesh, [names for *_, names in group])
        for (index, sample, _), flow in zip(group, flows):
            measure(index, sample, flow, flow_s / len(group))

    unit = "seq" if data_format == "middlebury" else "pair"
    count = len(samples) if limit is None else min(limit, len(samples))
    for i in tqdm(range(count), desc=desc, unit=unit, file=sys.stderr, disable=None if progress else True,
                  leave=False):
        sample = samples[i]
        names = ((str(pairs[i].frame1), str(pairs[i].frame2)) if pairs is not None
                 else (f"{sample.name}: frame 1", f"{sample.name}: frame 2"))
        if mesh is None:
            flow, _, flow_s = estimator.timed(sample.frame1, sample.frame2, names)
            measure(i, sample, flow, flow_s)
            continue
        group = pending.setdefault(np.shape(sample.frame1), [])
        group.append((i, sample, names))
        if len(group) == batch:
            run(pending.pop(np.shape(sample.frame1)))
    for group in pending.values():
        run(group)
    if not measured:
        raise ValueError("no samples to evaluate")
    rows = {name: row for name, row, _ in (measured[i] for i in sorted(measured))}
    counts = {name: c for name, _, c in measured.values()}
    return Report(rows, mean_metrics(rows, counts, POOLED[data_format]),
                  sum(estimator.compile_seconds.values()) - compiled_before)
