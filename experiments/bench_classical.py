"""Accuracy and speed of the classical presets against scikit-image and OpenCV, in one run.

Every method sees the same 8-bit grey frames of the Middlebury sequences in ``../shared/data``
(``RubberWhale``, ``Urban2``; grey = ITU-R BT.601 weights, rounded to uint8). EPE, >1 px and
>3 px are over the valid ground-truth pixels. Times are the median of ``--repeats`` runs after
one warm-up run; for the presets the ahead-of-time compile is reported in its own column and is
not part of the timing. A final section times a batch of 8 copies of the RubberWhale pair through
``FlowEstimator.batch`` (``jax.vmap``) against 8 single calls.

Run from the repository root (needs the ``bench`` extra: scikit-image, opencv-contrib-python-headless)::

    python experiments/bench_classical.py

Options: ``--methods tv-l1 skimage-tvl1`` (subset), ``--repeats 3``, ``--data ../shared/data``,
``--threads N`` (cap OpenCV / XLA / BLAS threads; default: all cores), ``--batch-methods tv-l1``
(or ``none``), ``--json results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from cpu_limits import pin_cpus, thread_variables

PRESETS = ("horn-schunck", "lucas-kanade", "tv-l1")
LIBRARY = ("skimage-tvl1", "skimage-ilk", "cv-farneback", "cv-dis-medium", "cv-dualtvl1", "cv-dualtvl1-step0.5")
SEQUENCES = ("RubberWhale", "Urban2")
# shared/data's README gives no Farneback parameters: these (OpenCV's usual example ones) reproduce its EPEs.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, no install needed


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(PRESETS + LIBRARY), choices=PRESETS + LIBRARY)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--threads", type=int, default=0, help="cap threads of OpenCV/XLA/BLAS (0: leave as is)")
    p.add_argument("--batch-methods", nargs="+", choices=PRESETS + ("none",),
                   help="presets for the batch section (default: the presets in --methods)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", type=Path, help="also save all results here")
    return p.parse_args()


def timed(fn, repeats: int):
    """(result, median seconds) of ``repeats`` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def library_methods(names, threads: int, notes: list) -> dict:
    """name -> fn(grey1 uint8 (H,W), grey2) -> (H,W,2) float flow (u, v); missing libraries noted."""
    import numpy as np

    fns = {}
    if any(n.startswith("skimage-") for n in names):
        try:
            from skimage.registration import optical_flow_ilk, optical_flow_tvl1
        except ImportError as e:
            notes.append(f"scikit-image not available ({e}): skimage rows skipped")
        else:
            # skimage returns (v, u), rows first; reference(x) ~ moving(x + flow), the .flo convention.
            fns["skimage-tvl1"] = lambda a, b: np.stack(optical_flow_tvl1(a, b)[::-1], axis=-1)
            fns["skimage-ilk"] = lambda a, b: np.stack(optical_flow_ilk(a, b)[::-1], axis=-1)
    if any(n.startswith("cv-") for n in names):
        try:
            import cv2
        except ImportError as e:
            notes.append(f"OpenCV not available ({e}): cv rows skipped")
            return {n: f for n, f in fns.items() if n in names}
        if threads:
            cv2.setNumThreads(threads)
        fns["cv-farneback"] = lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK)
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        fns["cv-dis-medium"] = lambda a, b: dis.calc(a, b, None)
        optflow = getattr(cv2, "optflow", None)
        factory = (getattr(optflow, "DualTVL1OpticalFlow_create", None)
                   or getattr(optflow, "createOptFlow_DualTVL1", None)
                   or getattr(cv2, "DualTVL1OpticalFlow_create", None))
        if factory is None:
            notes.append("OpenCV has no DualTVL1 (needs the contrib build): cv-dualtvl1 rows skipped")
        else:
            tvl1 = factory()
            fns["cv-dualtvl1"] = lambda a, b: tvl1.calc(a, b, None)
            tvl1_half = factory()
            tvl1_half.setScaleStep(0.5)
            fns["cv-dualtvl1-step0.5"] = lambda a, b: tvl1_half.calc(a, b, None)
    return {n: f for n, f in fns.items() if n in names}


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main():
    args = parse_args()
    if args.threads:
        os.environ.update(thread_variables(args.threads))  # before numpy/jax are imported
        pin_cpus(args.threads)
    import jax
    import numpy as np
    from tqdm import tqdm

    from unroll.estimator import FlowEstimator
    from unroll.flow_io import read_flow
    from unroll.images import read_image, to_grey
    from unroll.methods import preset
    from unroll.metrics import flow_metrics

    notes = []
    versions = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    for mod in ("skimage", "cv2"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("# Classical optical flow benchmark\n")
    print(f"- machine: {platform.machine()}, {cores} CPU cores usable ({os.cpu_count()} total), "
          f"threads cap: {args.threads or 'none'}, jax device: {jax.devices()[0]}")
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"- time: median of {args.repeats} runs after 1 warm-up; presets' compile time separate")
    print("- input: 8-bit grey frames (BT.601, rounded) for every method; EPE over valid pixels\n")

    pairs = {}
    for seq in SEQUENCES:
        folder = args.data / seq
        if not folder.is_dir():
            notes.append(f"{folder} missing: sequence skipped")
            continue
        grey = [np.rint(to_grey(read_image(folder / f"frame1{i}.png"))[..., 0]).astype(np.uint8) for i in (0, 1)]
        pairs[seq] = (*grey, *read_flow(folder / "flow10.flo"))
    libs = library_methods(args.methods, args.threads, notes)
    methods = [m for m in args.methods if m in PRESETS or m in libs]
    if not methods or not pairs:
        print("\n".join(f"note: {n}" for n in notes + ["nothing to run"]))
        return
    estimators = {m: FlowEstimator(preset(m)) for m in methods if m in PRESETS}

    results = []  # one dict per (sequence, method)
    bar = tqdm(total=len(pairs) * len(methods), desc="bench", leave=False)
    for seq, (g1, g2, gt, valid) in pairs.items():
        for m in methods:
            bar.set_postfix_str(f"{seq} {m}")
            compile_s = None
            if m in estimators:
                f1, f2 = g1[..., None].astype(np.float32), g2[..., None].astype(np.float32)
                compile_s = estimators[m].compile(f1, f2)
                flow, seconds = timed(lambda: estimators[m](f1, f2), args.repeats)
            else:
                flow, seconds = timed(lambda: libs[m](g1, g2), args.repeats)
            metrics = flow_metrics(np.asarray(flow, np.float32), gt, valid)
            results.append(dict(sequence=seq, method=m, seconds=seconds, compile_s=compile_s, **metrics))
            bar.update()
    bar.close()

    header = ["method", "EPE", ">1px %", ">3px %", "time s (median)", "compile s"]

    def row(name, r):
        return [name, fmt(r["epe"], ".3f"), fmt(r["px1"], ".1f"), fmt(r["px3"], ".1f"),
                fmt(r["seconds"], ".3f"), fmt(r["compile_s"], ".2f")]

    for seq in pairs:
        print(f"## {seq} {pairs[seq][0].shape[1]}x{pairs[seq][0].shape[0]}\n")
        print(md_table(header, [row(r["method"], r) for r in results if r["sequence"] == seq]) + "\n")

    means = {}
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        means[m] = {k: None if rs[0][k] is None else float(np.mean([r[k] for r in rs]))
                    for k in ("epe", "px1", "px3", "seconds", "compile_s")}
    print(f"## Mean over {len(pairs)} sequences\n")
    print(md_table(header, [row(m, means[m]) for m in methods]) + "\n")

    comparison = []
    if {"skimage-tvl1", "tv-l1"} <= set(methods):
        print("## scikit-image TV-L1 vs unroll tv-l1 (goal: tv-l1 >= 3x faster at lower EPE)\n")
        by = {(r["sequence"], r["method"]): r for r in results}
        rows = [(seq, by[seq, "skimage-tvl1"], by[seq, "tv-l1"]) for seq in pairs]
        rows.append(("mean", means["skimage-tvl1"], means["tv-l1"]))
        table = []
        for name, sk, ours in rows:
            ratio = sk["seconds"] / ours["seconds"]
            goal = "yes" if ratio >= 3 and ours["epe"] < sk["epe"] else "no"
            comparison.append(dict(sequence=name, skimage_epe=sk["epe"], unroll_epe=ours["epe"],
                                   skimage_s=sk["seconds"], unroll_s=ours["seconds"], speedup=ratio, goal_met=goal))
            table.append([name, f"{sk['epe']:.3f}", f"{ours['epe']:.3f}", f"{sk['seconds']:.3f}",
                          f"{ours['seconds']:.3f}", f"{ratio:.2f}x", goal])
        print(md_table(["sequence", "sk-TVL1 EPE", "tv-l1 EPE", "sk-TVL1 s", "tv-l1 s",
                        "sk time / tv-l1 time", "goal met"], table) + "\n")

    batch = []
    batch_methods = [m for m in (args.batch_methods or [m for m in methods if m in PRESETS]) if m != "none"]
    if batch_methods and "RubberWhale" in pairs:
        n = args.batch_size
        g1, g2 = pairs["RubberWhale"][:2]
        f1, f2 = g1[..., None].astype(np.float32), g2[..., None].astype(np.float32)
        b1, b2 = np.stack([f1] * n), np.stack([f2] * n)
        for m in tqdm(batch_methods, desc="batch", leave=False):
            est = estimators.get(m) or FlowEstimator(preset(m))
            est.compile(f1, f2)
            est.batch(b1, b2)  # compiles the batch shape; timed() adds its own warm-up
            _, t_batch = timed(lambda: est.batch(b1, b2), args.repeats)
            _, t_single = timed(lambda: [est(f1, f2) for _ in range(n)], args.repeats)
            batch.append(dict(method=m, batch_size=n, batch_s=t_batch, single_s=t_single,
                              batch_pairs_per_s=n / t_batch, single_pairs_per_s=n / t_single,
                              speedup=t_single / t_batch))
        print(f"## Batch throughput: the RubberWhale pair {n} times, est.batch (vmap) vs {n} calls of est()\n")
        print(md_table(["method", f"batch of {n}: s", "pairs/s", f"{n} single calls: s", "pairs/s",
                        "batch / single throughput"],
                       [[b["method"], f"{b['batch_s']:.3f}", f"{b['batch_pairs_per_s']:.2f}", f"{b['single_s']:.3f}",
                         f"{b['single_pairs_per_s']:.2f}", f"{b['speedup']:.2f}x"] for b in batch]) + "\n")

    for note in notes:
        print(f"note: {note}")
    if args.json:
        info = dict(versions=versions, cores=cores, threads=args.threads, repeats=args.repeats,
                    farneback=FARNEBACK, notes=notes)
        args.json.write_text(json.dumps(dict(info=info, results=results, mean=means, comparison=comparison,
                                             batch=batch), indent=2))
        print(f"results saved to {args.json}")


if __name__ == "__main__":
    main()
