"""The ``unroll`` command line: compute flow, evaluate methods, list methods, show configs, train
hybrids from experiment files, run ablations and studies.

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

from flax import nnx

from unroll import compile_cache, distributed
from unroll.ablation import variants as ablation_variants
from unroll.checkpoints import load_trained
from unroll.config import override, to_dict, to_json
from unroll.data.datasets import FORMATS, FRAME1, FRAME2, GROUND_TRUTH
from unroll.errors import InputError
from unroll.estimator import FlowEstimator
from unroll.evaluation import evaluate
from unroll.flow_io import write_flow
from unroll.files import atomic_write_bytes
from unroll.images import read_image
from unroll.experiment import experiment, load_experiment
from unroll.methods import METHODS, MODELS, MethodConfig, count_params, param_count, param_structure, preset
from unroll.study import load_study, markdown, run_study
from unroll.trainer import start_from, train
from unroll.visualize import write_flow_image
from learned.raft.convert import convert, read_state_dict

#: One line per method, shown by ``unroll models``; every preset needs one.
DESCRIPTIONS: dict[str, str] = {
    "horn-schunck": "Horn & Schunck (1981): quadratic data and smoothness terms, "
                    "coarse-to-fine warping with median filtering.",
    "lucas-kanade": "Pyramidal iterative Lucas & Kanade (1981): least squares in a Gaussian window, "
                    "no smoothness term.",
    "tv-l1": "Charbonnier (robust, ~L1) data term and total-variation smoothness, "
             "red-black SOR with warping and median filtering.",
    "raft": "RAFT (Teed & Deng 2020): learned features, all-pairs correlation lookup, SepConvGRU "
            "update, convex upsampling (random weights: train, or convert the published ones).",
    "raft-small": "RAFT-small: bottleneck encoders, ConvGRU update, radius-3 lookup, bilinear upsampling.",
    "flownet-s": "FlowNetS (Dosovitskiy et al. 2015): both frames stacked into one encoder, refinement "
                 "decoder with a prediction at every scale.",
    "flownet-c": "FlowNetC (Dosovitskiy et al. 2015): two-stream encoder, local correlation (±20 px, "
                 "stride 2), the same decoder.",
    "pwc-net": "PWC-Net (Sun et al. 2018): learned feature pyramid, warping, local cost volume (range 4) "
               "and a DenseNet estimator per level, context network.",
    "gmflow": "GMFlow (Xu et al. 2022): transformer features, global softmax matching over all pixels, "
              "flow propagation by self-attention, convex upsampling.",
    "gmflow-refine": "GMFlow with refinement: global matching at 1/8, then local matching (radius 4) on warped "
                     "features and 3x3 propagation at 1/4, convex 4x upsampling.",
    "flowformer": "FlowFormer (Huang et al. 2022) with RAFT's encoders: all-pairs cost maps encoded into latent "
                  "tokens by attention (AGT), memory queried at the flow, GRU update.",
}

_FLOW_EXTENSIONS = (".flo", ".png")
DEFAULT_METHOD = "tv-l1"
_METHOD_HELP = f"method name, one of: {', '.join(METHODS)} (default: {DEFAULT_METHOD}; see `unroll models`)"


def _config(args) -> MethodConfig:
    """The method of ``--method`` (or of ``--checkpoint``) with the ``--set`` overrides."""
    return _method(args)[0]


def _method(args) -> tuple[MethodConfig, nnx.State | None]:
    """The method config and, with ``--checkpoint``, its trained parameters; names ``args.label``."""
    checkpoint = getattr(args, "checkpoint", None)
    overrides = args.set + ([f"solver.num_iters={args.iters}"] if getattr(args, "iters", None) else [])
    if checkpoint is None:
        args.label = args.method or DEFAULT_METHOD
        return override(preset(args.label), overrides), None
    args.label = os.path.basename(os.path.normpath(checkpoint))
    return load_trained(checkpoint, overrides, base=args.method)


def _enable_cache(args) -> None:
    """The persistent compile cache, on unless ``--no-cache``."""
    if args.no_cache:
        compile_cache.disable()
    else:
        try:
            compile_cache.enable()
        except OSError as e:
            print(f"unroll: warning: compile cache off ({e})", file=sys.stderr)


def _estimator(args) -> tuple[MethodConfig, FlowEstimator]:
    """The method and its estimator (trained parameters loaded), with the persistent compile cache
    on unless ``--no-cache``."""
    _enable_cache(args)
    config, params = _method(args)
    return config, FlowEstimator(config, params=params)


def _flow(args) -> None:
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in _FLOW_EXTENSIONS:
        raise InputError(f"{args.output}: unknown flow file extension {ext!r} (use .flo or .png)")
    frame1, frame2 = read_image(args.frame1), read_image(args.frame2)
    _, est = _estimator(args)
    flow, compile_s, flow_s = est.timed(frame1, frame2, (args.frame1, args.frame2))
    write_flow(args.output, flow)
    outputs = [args.output]
    if args.viz:
        write_flow_image(args.viz, flow)
        outputs.append(args.viz)
    print(f"{args.label}: compiled in {compile_s:.1f} s, flow in {flow_s:.2f} s -> {', '.join(outputs)}",
          file=sys.stderr)


def _eval(args) -> None:
    dataset = FORMATS[args.format](args.data)
    config, est = _estimator(args)
    report = evaluate(est, dataset, args.format, args.limit, desc=args.label, batch=args.batch)
    print(report.table())
    if args.json:
        result = {"method": args.label, "checkpoint": args.checkpoint, "format": args.format, "config": to_dict(config),
                  "compile_s": report.compile_s, "sequences": report.rows, "mean": report.mean}
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
    target = f" -> {args.json}" if args.json else ""
    units = "sequences" if args.format == "middlebury" else "pairs"
    print(f"{args.label}: compiled in {report.compile_s:.1f} s, {len(report.rows)} {units} in "
          f"{sum(r['time_s'] for r in report.rows.values()):.2f} s{target}", file=sys.stderr)


def _models(args) -> None:
    width = max(map(len, METHODS))
    print(f"{'method':<{width}}  {'params':>9}  description")
    for name, config in METHODS.items():
        print(f"{name:<{width}}  {count_params(config):>9}  {DESCRIPTIONS[name]}")


def _show_config(args) -> None:
    if args.experiment:
        if args.method is not None:
            raise InputError("--method and --experiment exclude each other: an experiment names its base method")
        print(to_json(load_experiment(args.experiment, args.set)))
    else:
        print(to_json(_config(args)))


def _compare(args, variants: dict, table: str) -> None:
    """Run the study ``variants``, print its table and say where the files went."""
    _enable_cache(args)
    rows = run_study(variants, args.workdir, table, progress=not args.quiet, seeds=args.seeds or ())
    print(markdown(rows), end="")
    print(f"tables and chart -> {os.path.join(args.workdir, table + '.{md,csv,png}')}", file=sys.stderr)


def _ablate(args) -> None:
    _compare(args, ablation_variants(load_experiment(args.config, args.set)), "ablation")


def _study(args) -> None:
    _compare(args, load_study(args.config, args.set), "study")


def _train(args) -> None:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    config = load_experiment(args.config, args.set)
    _enable_cache(args)
    result = train(config, args.workdir, progress=not args.quiet)
    lines = [f"{name}: EPE {m['epe']:.3f}" for name, m in result["validation"].items()]
    print(f"trained {result['params']} parameters for {result['steps']} steps in "
          f"{result['train_seconds']:.0f} s -> {args.workdir}" + "".join(f"; {line}" for line in lines),
          file=sys.stderr)


def _convert(args) -> None:
    state_dict = read_state_dict(args.input)
    config = experiment({"base": args.model}, args.set)
    params = convert(state_dict, param_structure(config.method))
    start_from(args.output, config, params)
    print(f"converted {len(state_dict)} tensors ({param_count(params)} parameters) of {args.input} -> "
          f"{args.output}; use it with --checkpoint {args.output}", file=sys.stderr)


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
               "  unroll config --method tv-l1 --set smoothness.alpha=3\n"
               "  unroll train experiments/hybrid_hs.toml --workdir runs/hybrid_hs\n"
               "  unroll eval --checkpoint runs/hybrid_hs --data ../shared/data\n"
               "  unroll ablate experiments/ablation_hs.toml --workdir runs/ablation_hs\n"
               "  unroll study experiments/lineage.toml --workdir runs/lineage\n"
               "  unroll convert raft raft-things.pth runs/raft-things\n\n"
               "Run `unroll COMMAND --help` for the options of a command.")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not use the persistent compilation cache (directory: $UNROLL_CACHE_DIR, "
                             "else $XDG_CACHE_HOME/unroll/jax, else ~/.cache/unroll/jax)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Options of every command that picks a method; --no-cache is also accepted after the command.
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", metavar="NAME", help=_METHOD_HELP)
    method.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. smoothness.alpha=3 (repeatable; "
                             "`unroll config` lists the keys)")
    compiling = argparse.ArgumentParser(add_help=False, parents=[method])
    compiling.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                           help="do not use the persistent compilation cache")
    compiling.add_argument("--checkpoint", metavar="DIR",
                           help="use the trained model in DIR (an `unroll train` or `unroll convert` folder); "
                                "its method comes with it (--method, if given, must name the run's base) and "
                                "--set may still change its keys, e.g. solver.num_iters")
    compiling.add_argument("--iters", type=_positive_int, metavar="N",
                           help="iterations of the solver (RAFT: refinement iterations; classical: per "
                                "linearisation); the same as --set solver.num_iters=N")

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
               "  unroll eval --method tv-l1 --data MPI-Sintel-complete --format sintel --limit 50\n"
               "  unroll eval --checkpoint runs/raft_small --data ../shared/data --set compute_dtype=bfloat16 "
               "--batch 4")
    evaluate.add_argument("--data", required=True, metavar="DIR", help="the data set folder (see above)")
    evaluate.add_argument("--format", default="middlebury", choices=list(FORMATS),
                          help="layout of DIR and benchmark conventions (default: %(default)s)")
    evaluate.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate only the first N pairs")
    evaluate.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    evaluate.add_argument("--batch", type=_positive_int, default=1, metavar="N",
                          help="run pairs of equal size N at a time, split over every local device (N: a "
                               "multiple of the device count; a size's last batch is padded to one); the "
                               "time column is then each batch's time over its pairs (default: 1, one by one)")
    evaluate.set_defaults(func=_eval)

    models = commands.add_parser(
        "models", formatter_class=formatter, help="list the methods",
        description="List every method with its number of learned parameters and a description.",
        epilog="example:\n  unroll models")
    models.set_defaults(func=_models)

    config = commands.add_parser(
        "config", parents=[method], formatter_class=formatter, help="print a method's full config as JSON",
        description=textwrap.fill("Print the resolved configuration of a method (after --set) as JSON: every key "
                    "that --set accepts, with its value. With --experiment, the whole experiment of a "
                    "config file (method, optim, data, run, validation sections)."),
        epilog="examples:\n  unroll config --method tv-l1 --set smoothness.alpha=3 --set solver.num_iters=50\n"
               "  unroll config --experiment experiments/hybrid_hs.toml --set optim.steps=10")
    config.add_argument("--experiment", metavar="FILE", help="an experiment config file (.toml or .json)")
    config.set_defaults(func=_show_config)

    # Options of the commands that run an experiment file.
    experiment_options = argparse.ArgumentParser(add_help=False)
    experiment_options.add_argument("config", metavar="CONFIG", help="experiment config file (.toml or .json)")
    experiment_options.add_argument("--workdir", required=True, metavar="DIR",
                                    help="run folder (created, or resumed)")
    experiment_options.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                                    help="override a key of the experiment, e.g. optim.steps=100 (repeatable)")
    experiment_options.add_argument("--quiet", action="store_true", help="no progress bars")
    experiment_options.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS,
                                    help="do not use the persistent compilation cache")
    training = commands.add_parser(
        "train", parents=[experiment_options], formatter_class=formatter, help="train a model from an experiment config file",
        description=textwrap.fill("Train the method of the experiment CONFIG (.toml or .json; `unroll config "
                    "--experiment CONFIG` shows every key) in DIR: checkpoints of parameters, optimiser "
                    "and data position every run.checkpoint_every steps, a metrics log (DIR/log.jsonl, and "
                    "DIR/tensorboard when tensorboardX is installed), validation on synthetic pairs and "
                    "on the real sequences of validation.real_data, and DIR/result.json at the end. "
                    "Running it again on DIR resumes from the newest checkpoint (and does nothing more "
                    "once finished). Use the result with `unroll flow|eval --checkpoint DIR`."),
        epilog="examples:\n  unroll train experiments/hybrid_hs.toml --workdir runs/hybrid\n"
               "  unroll train experiments/hybrid_hs.toml --set optim.steps=50 --set data.batch_size=2 "
               "--workdir runs/quick\n"
               "  unroll train exp.toml --workdir /shared/run --coordinator host0:1234 --num-processes 2 "
               "--process-id 0   # on host0; --process-id 1 on the other host\n\n"
               "Every visible device takes part (data-parallel); see docs/distributed.md.")
    training.add_argument("--coordinator", metavar="HOST:PORT",
                          help="multi-process run: address of process 0 (default: $JAX_COORDINATOR_ADDRESS, "
                               "or found by JAX under Slurm, Open MPI, Kubernetes, Cloud TPU)")
    training.add_argument("--num-processes", type=_positive_int, metavar="N",
                          help="multi-process run: number of processes (default: $SLURM_NTASKS or "
                               "$OMPI_COMM_WORLD_SIZE, else 1)")
    training.add_argument("--process-id", type=int, metavar="I",
                          help="multi-process run: this process's id, 0 .. N-1 (default: found by JAX)")
    training.set_defaults(func=_train)

    ablate = commands.add_parser(
        "ablate", parents=[experiment_options], formatter_class=formatter,
        help="train and compare hand-tuned, one-learned-operator and all-learned variants",
        description=textwrap.fill("From the experiment CONFIG, whose method is hand-tuned, run: all operators "
                    "hand-tuned; each operator of the [ablation] section learned alone; all of them "
                    "learned. Same data, budget and seed for each; every variant is a training run in "
                    "DIR/<variant> (finished runs are reused, interrupted ones resume). Prints a Markdown "
                    "table (EPE and px1/3/5 on the synthetic validation pairs and on the real sequences, "
                    "parameters, training seconds) and writes DIR/ablation.md, ablation.csv and a bar "
                    "chart ablation.png."),
        epilog="examples:\n  unroll ablate experiments/ablation_hs.toml --workdir runs/ablation\n"
               "  unroll ablate experiments/ablation_hs.toml --workdir runs/ablation --seeds 0 1 2")
    ablate.set_defaults(func=_ablate)

    study = commands.add_parser(
        "study", parents=[experiment_options], formatter_class=formatter,
        help="train and compare the variants listed in a study file",
        description=textwrap.fill("Run every variant of the study file CONFIG: an experiment file (the keys all "
                    "variants share: seed, data, optim.steps, validation) with a [variants] table of "
                    "name = [\"key=value\", ...] (e.g. [\"base=raft\"]; a network's base brings its paper's "
                    "optimiser recipe). Each variant is a training run in DIR/<name> (a method with nothing "
                    "to learn is only evaluated; finished runs are reused, interrupted ones resume); --set "
                    "applies to all. Prints a Markdown table (parameters, training seconds, and per "
                    "validation set EPE, px1/3/5 and the mean flow seconds per pair) and writes "
                    "DIR/study.md, study.csv and a bar chart study.png."),
        epilog="example:\n  unroll study experiments/lineage.toml --workdir runs/lineage")
    study.set_defaults(func=_study)
    for comparing in (ablate, study):
        comparing.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                            help="train each variant once per seed (in DIR/<variant>/seed-<SEED>) and report "
                                 "mean ± standard deviation over them (hand-tuned variants: evaluated once)")

    converting = commands.add_parser(
        "convert", formatter_class=formatter, help="import PyTorch RAFT weights",
        description=textwrap.fill("Convert a PyTorch RAFT checkpoint IN (the original princeton-vl/RAFT .pth "
                    "files, with or without the `module.` prefix, or a torchvision raft_large / "
                    "raft_small state dict saved with torch.save) into OUT_DIR, a run folder that "
                    "`unroll flow|eval --checkpoint OUT_DIR` use. "
                    "Every tensor is mapped: the command fails naming any that are missing, left over "
                    "or of the wrong shape. Needs PyTorch (pip install 'unroll[torch]')."),
        epilog="examples:\n  unroll convert raft raft-things.pth runs/raft-things\n"
               "  unroll flow frame10.png frame11.png --checkpoint runs/raft-things --iters 32 -o flow.flo")
    converting.add_argument("model", choices=list(MODELS), help="which network the weights are for")
    converting.add_argument("input", metavar="IN", help="PyTorch checkpoint (.pth)")
    converting.add_argument("output", metavar="OUT_DIR", help="run folder to create")
    converting.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a key of the run's experiment, e.g. method.model.correlation=on-the-fly")
    converting.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``) and returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, OSError, FloatingPointError) as e:
        print(f"unroll: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unroll: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
