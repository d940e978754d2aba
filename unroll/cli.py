"""The ``unroll`` command line: compute flow, evaluate methods, list methods, show configs.

Results go to stdout (the evaluation table, the method list, the config JSON); progress and
timing lines go to stderr. Bad input of any kind ends with one line
``unroll: error: <message>`` on stderr and exit status 2, as argparse does for bad arguments.

Run ``unroll --help`` or ``unroll COMMAND --help`` for the commands and examples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from unroll import compile_cache
from unroll.config import override, to_dict, to_json
from unroll.data.datasets import (
    FORMATS, FRAME1, FRAME2, GROUND_TRUTH, Sample, occlusion_split)
from unroll.errors import InputError
from unroll.estimator import FlowEstimator
from unroll.flow_io import write_flow
from unroll.files import atomic_write_bytes
from unroll.images import read_image
from unroll.methods import PRESETS, MethodConfig, build, preset
from unroll.metrics import flow_metrics, valid_mask
from unroll.visualize import write_flow_image

#: One line per method, shown by ``unroll models``; every preset needs one.
DESCRIPTIONS: dict[str, str] = {
    "horn-schunck": "Horn & Schunck (1981): quadratic data and smoothness terms, "
                    "coarse-to-fine warping with median filtering.",
    "lucas-kanade": "Pyramidal iterative Lucas & Kanade (1981): least squares in a Gaussian window, "
                    "no smoothness term.",
    "tv-l1": "Charbonnier (robust, ~L1) data term and total-variation smoothness, "
             "red-black SOR with warping and median filtering.",
}

#: Columns of ``unroll eval``: JSON key (a ``flow_metrics`` key, or ``time_s``) and table heading.
COLUMNS = {"epe": "EPE", "aae": "AAE", "px1": "px1 %", "px3": "px3 %", "px5": "px5 %",
           "fl_all": "Fl-all %", "time_s": "time s"}
_METRICS = [k for k in COLUMNS if k != "time_s"]
#: Extra columns for data with occlusion masks (Sintel, KITTI): EPE on the pixels visible in both
#: frames and on those occluded in frame 2.
SPLIT_COLUMNS = {"epe_noc": "EPE noc", "epe_occ": "EPE occ"}

#: Per ``--format``, the metrics whose mean pools the pixels of all samples, as the benchmark
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
}

_FLOW_EXTENSIONS = (".flo", ".png")
_METHOD_HELP = f"method name, one of: {', '.join(PRESETS)} (default: %(default)s; see `unroll models`)"


def count_params(config: MethodConfig) -> int:
    """Number of learned parameters (scalars in ``nnx.Param`` leaves) of the method."""
    state = nnx.state(build(config), nnx.Param)
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(state))


def _config(args) -> MethodConfig:
    return override(preset(args.method), args.set)


def _estimator(args, config: MethodConfig) -> FlowEstimator:
    """The estimator for ``config``, with the persistent compile cache on unless ``--no-cache``."""
    if args.no_cache:
        compile_cache.disable()
    else:
        try:
            compile_cache.enable()
        except OSError as e:
            print(f"unroll: warning: compile cache off ({e})", file=sys.stderr)
    return FlowEstimator(config)


def _timed_flow(est: FlowEstimator, frame1: np.ndarray, frame2: np.ndarray,
                names: tuple[str, str]) -> tuple[np.ndarray, float, float]:
    """Flow, compile seconds (for this shape) and flow seconds (excluding the compile)."""
    est.check(frame1, frame2, names)
    compile_s = est.compile(frame1, frame2)
    start = time.perf_counter()
    flow = est(frame1, frame2, names)
    return flow, compile_s, time.perf_counter() - start


def _flow(args) -> None:
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in _FLOW_EXTENSIONS:
        raise InputError(f"{args.output}: unknown flow file extension {ext!r} (use .flo or .png)")
    config = _config(args)
    frame1, frame2 = read_image(args.frame1), read_image(args.frame2)
    est = _estimator(args, config)
    flow, compile_s, flow_s = _timed_flow(est, frame1, frame2, (args.frame1, args.frame2))
    write_flow(args.output, flow)
    outputs = [args.output]
    if args.viz:
        write_flow_image(args.viz, flow)
        outputs.append(args.viz)
    print(f"{args.method}: compiled in {compile_s:.1f} s, flow in {flow_s:.2f} s -> {', '.join(outputs)}",
          file=sys.stderr)


def _table(rows: dict[str, dict], columns: dict[str, str]) -> str:
    width = max(len("sequence"), *map(len, rows))
    lines = [f"{'sequence':<{width}}" + "".join(f"{h:>10}" for h in columns.values())]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{'-':>10}" if row[k] is None else f"{row[k]:>10.3f}"
                                                  for k in columns))
    return "\n".join(lines)


def _sample_metrics(flow: np.ndarray, sample: Sample) -> tuple[dict, dict]:
    """The metrics of one sample, and per metric the number of pixels it was measured on.

    With occlusion masks, ``epe_noc`` and ``epe_occ`` too (``None`` where the sample has no such pixel).
    """
    metrics = flow_metrics(flow, sample.flow, sample.valid)
    row = {k: metrics[k] for k in _METRICS}
    counts = dict.fromkeys(row, metrics["n_valid"])
    known = valid_mask(sample.flow)
    for part, mask in occlusion_split(sample).items():
        key = f"epe_{part}"
        counts[key] = int(np.count_nonzero(mask & known))
        row[key] = flow_metrics(flow, sample.flow, mask)["epe"] if counts[key] else None
    return row, counts


def _mean(rows: dict[str, dict], counts: dict[str, dict], pooled: tuple[str, ...]) -> dict:
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


def _eval(args) -> None:
    dataset = FORMATS[args.format](args.data)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    config = _config(args)
    est = _estimator(args, config)
    results, counts = {}, {}
    units = ("seq", "sequences") if args.format == "middlebury" else ("pair", "pairs")
    for i in tqdm(range(count), desc=args.method, unit=units[0], file=sys.stderr, disable=None):
        pair, sample = dataset.pairs[i], dataset[i]
        flow, _, flow_s = _timed_flow(est, sample.frame1, sample.frame2, (str(pair.frame1), str(pair.frame2)))
        row, counts[sample.name] = _sample_metrics(flow, sample)
        results[sample.name] = row | {"time_s": flow_s}
    mean = _mean(results, counts, POOLED[args.format])
    columns = ({k: COLUMNS[k] for k in _METRICS} | {k: h for k, h in SPLIT_COLUMNS.items() if k in mean}
               | {"time_s": COLUMNS["time_s"]})
    compile_s = sum(est.compile_seconds.values())
    print(_table(results | {"mean": mean}, columns))
    report = {"method": args.method, "format": args.format, "config": to_dict(config), "compile_s": compile_s,
              "sequences": results, "mean": mean}
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())
    target = f" -> {args.json}" if args.json else ""
    print(f"{args.method}: compiled in {compile_s:.1f} s, {len(results)} {units[1]} in "
          f"{sum(r['time_s'] for r in results.values()):.2f} s{target}", file=sys.stderr)


def _models(args) -> None:
    width = max(map(len, PRESETS))
    print(f"{'method':<{width}}  {'params':>8}  description")
    for name, config in PRESETS.items():
        print(f"{name:<{width}}  {count_params(config):>8}  {DESCRIPTIONS[name]}")


def _show_config(args) -> None:
    print(to_json(_config(args)))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="unroll", formatter_class=formatter,
        description="Optical flow in JAX: classical energies and learned networks as one unrolled solver.",
        epilog="examples:\n"
               "  unroll flow frame10.png frame11.png -o flow.flo --viz flow.png\n"
               "  unroll eval --method horn-schunck --data data/\n"
               "  unroll models\n"
               "  unroll config --method tv-l1 --set smoothness.alpha=3\n\n"
               "Run `unroll COMMAND --help` for the options of a command.")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not use the persistent compilation cache (directory: $UNROLL_CACHE_DIR, "
                             "else $XDG_CACHE_HOME/unroll/jax, else ~/.cache/unroll/jax)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Options of every command that picks a method; --no-cache is also accepted after the command.
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", default="tv-l1", metavar="NAME", help=_METHOD_HELP)
    method.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. smoothness.alpha=3 (repeatable; "
                             "`unroll config` lists the keys)")
    compiling = argparse.ArgumentParser(add_help=False, parents=[method])
    compiling.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                           help="do not use the persistent compilation cache")

    flow = commands.add_parser(
        "flow", parents=[compiling], formatter_class=formatter, help="compute the flow between two frames",
        description=textwrap.fill("Compute the flow from FRAME1 to FRAME2 and write it as .flo (Middlebury) or "
                    ".png (KITTI 16-bit), chosen by the extension of -o. Prints the compile time and "
                    "the flow time separately."),
        epilog="example:\n  unroll flow frame10.png frame11.png --method horn-schunck "
               "-o flow.flo --viz flow.png --set smoothness.alpha=10")
    flow.add_argument("frame1", metavar="FRAME1", help="first frame (image file)")
    flow.add_argument("frame2", metavar="FRAME2", help="second frame, same size")
    flow.add_argument("-o", "--output", required=True, metavar="OUT", help="flow file to write: .flo or .png")
    flow.add_argument("--viz", metavar="PNG", help="also write the flow as a colour picture (PNG)")
    flow.set_defaults(func=_flow)

    evaluate = commands.add_parser(
        "eval", parents=[compiling], formatter_class=formatter, help="evaluate a method on data with ground truth",
        description=textwrap.fill(f"Run a method on every frame pair in DIR and print EPE, AAE, the "
                    "percentages of pixels with endpoint error over 1, 3 and 5 px, Fl-all and the "
                    "flow time per pair (compile time excluded), and their mean. DIR is in the layout of "
                    f"--format: middlebury (folders of {FRAME1}, {FRAME2}, {GROUND_TRUTH}; DIR may itself "
                    "be one), sintel (training set, clean pass), kitti (2015 or 2012 training set), chairs "
                    "(validation split), things (FlyingThings3D TEST, clean pass, left camera) or hd1k. "
                    "The mean follows each benchmark: Sintel pools all pixels; KITTI and HD1K average "
                    "EPE per image and pool the outlier percentages (Fl-all) over all valid pixels; "
                    "the others average per pair. With occlusion masks (Sintel, KITTI) EPE noc "
                    "and EPE occ are added: EPE on the pixels visible in both frames and on the others."),
        epilog="examples:\n  unroll eval --method tv-l1 --data data/ --json results.json\n"
               "  unroll eval --method tv-l1 --data MPI-Sintel-complete --format sintel --limit 50")
    evaluate.add_argument("--data", required=True, metavar="DIR", help="the data set folder (see above)")
    evaluate.add_argument("--format", default="middlebury", choices=list(FORMATS),
                          help="layout of DIR and benchmark conventions (default: %(default)s)")
    evaluate.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate only the first N pairs")
    evaluate.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    evaluate.set_defaults(func=_eval)

    models = commands.add_parser(
        "models", formatter_class=formatter, help="list the methods",
        description="List every method with its number of learned parameters and a description.",
        epilog="example:\n  unroll models")
    models.set_defaults(func=_models)

    config = commands.add_parser(
        "config", parents=[method], formatter_class=formatter, help="print a method's full config as JSON",
        description=textwrap.fill("Print the resolved configuration of a method (after --set) as JSON: every key "
                    "that --set accepts, with its value."),
        epilog="example:\n  unroll config --method tv-l1 --set smoothness.alpha=3 --set solver.num_iters=50")
    config.set_defaults(func=_show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``) and returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, OSError) as e:
        print(f"unroll: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unroll: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
