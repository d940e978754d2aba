"""Training throughput against the device count, in float32 and bfloat16.

For every ``--dtypes`` x ``--devices`` pair, one subprocess builds the data-parallel train step of
``unroll train`` (``unroll.training.make_train_step`` over ``unroll.distributed.mesh``) for
``--model`` with ``method.compute_dtype`` set, compiles it (timed apart), runs one warm-up step and
then ``--steps`` timed steps on synthetic batches of ``--batch`` pairs of ``--size``, placed on the
devices beforehand. The global batch is the same for every device count. Reported: the median
step time, the throughput in pairs/s, the speed-up ``throughput_n / throughput_1``, the scaling
efficiency ``throughput_n / (n throughput_1)`` and the throughput relative to float32 on as many
devices.

Devices: each subprocess runs with ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` and
uses the first ``n`` of ``jax.devices()``: the real GPUs on a GPU machine, and ``n`` CPU devices
otherwise. Forced CPU devices share the same cores, so on a CPU the table measures the overhead
of the data-parallel program (splitting, all-reduce, smaller per-device work), not a speed-up.

Run from the repository root::

    python experiments/bench_scaling.py

Options: ``--devices 1 2 4``, ``--dtypes float32 bfloat16``, ``--model raft-small`` (any method
with network layers), ``--iters 4`` (solver iterations, unrolled), ``--size 96x128`` (HEIGHTxWIDTH),
``--batch 4`` (global batch: a multiple of every device count), ``--steps 5``, ``--set KEY=VALUE``
(more experiment keys, repeatable), ``--timeout 900`` (seconds per subprocess), ``--json OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, no install needed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4], help="device counts")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--model", default="raft-small", help="base method of the experiment (default: %(default)s)")
    p.add_argument("--iters", type=int, default=4, help="solver iterations, unrolled (default: %(default)s)")
    p.add_argument("--size", default="96x128", help="frame size HEIGHTxWIDTH (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="global batch, pairs per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more experiment keys")
    p.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    p.add_argument("--json", type=Path, help="also save the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration, as JSON
    args = p.parse_args(argv)
    bad = [n for n in args.devices if n < 1 or args.batch % n]
    if bad:
        p.error(f"--batch {args.batch} must be a multiple of every device count, not of {bad}")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def experiment_keys(args, dtype: str) -> list[str]:
    """The ``--set`` overrides of one run's experiment."""
    h, _, w = args.size.lower().partition("x")
    return [f"method.compute_dtype={dtype}", f"method.solver.num_iters={args.iters}", "method.solver.unroll=true",
            f"data.synthetic.size={h},{w}", f"data.batch_size={args.batch}", *args.set]


def worker(spec: dict) -> dict:
    """Compile and time the train step of ``spec`` on the first ``spec["devices"]`` devices."""
    import jax
    import numpy as np

    from unroll import distributed
    from unroll.data.pipeline import TrainingData
    from unroll.experiment import experiment
    from unroll.methods import build, frame_channels
    from unroll.training import make_train_step

    n = spec["devices"]
    if jax.device_count() < n:
        raise SystemExit(f"{n} devices asked for, {jax.device_count()} visible")
    config = experiment({"base": spec["model"]}, spec["keys"])
    mesh = distributed.mesh(jax.devices()[:n])
    step, params, opt_state = make_train_step(build(config.method, keep_trajectory=True, seed=config.seed),
                                              config.optim, mesh)
    data = TrainingData(config.data, config.seed, frame_channels(config.method.data))
    batches = [distributed.put_batch(data.batch(k), mesh) for k in range(spec["steps"] + 1)]
    start = time.perf_counter()
    step = step.lower(params, opt_state, batches[0]).compile()
    compile_s = time.perf_counter() - start
    times = []
    for k, batch in enumerate(batches):  # batch 0: the warm-up step, not timed
        start = time.perf_counter()
        params, opt_state, measured = step(params, opt_state, batch)
        loss = float(jax.block_until_ready(measured["loss"]))
        if k:
            times.append(time.perf_counter() - start)
    if not np.isfinite(loss):
        raise SystemExit(f"the loss is {loss}")
    step_s = statistics.median(times)
    return dict(dtype=spec["dtype"], devices=n, platform=jax.devices()[0].platform,
                device_kind=jax.devices()[0].device_kind, compile_s=compile_s, step_s=step_s,
                pairs_per_s=spec["batch"] / step_s, loss=loss)


def run_worker(spec: dict, timeout: float) -> dict:
    """``worker(spec)`` in a subprocess that sees ``spec["devices"]`` CPU devices (or the real ones)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={spec['devices']}"]))
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise SystemExit(f"worker {spec['dtype']} x {spec['devices']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict]) -> list[dict]:
    """``rows`` with, per row, ``speedup`` = its throughput / the 1-device throughput of its dtype,
    ``efficiency`` = speedup / devices, ``vs_float32`` = its throughput / float32's on as many
    devices (None where not measured)."""
    single = {r["dtype"]: r["pairs_per_s"] for r in rows if r["devices"] == 1}
    float32 = {r["devices"]: r["pairs_per_s"] for r in rows if r["dtype"] == "float32"}
    for r in rows:
        one, base = single.get(r["dtype"]), float32.get(r["devices"])
        r["speedup"] = r["pairs_per_s"] / one if one else None
        r["efficiency"] = r["speedup"] / r["devices"] if one else None
        r["vs_float32"] = r["pairs_per_s"] / base if base else None
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = ["| dtype | devices | compile s | step s | pairs/s | vs 1 device | efficiency | vs float32 |",
             "|---" * 8 + "|"]
    lines += [f"| {r['dtype']} | {r['devices']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['pairs_per_s']:.2f} | "
              f"{fmt(r['speedup'], '.2f')} | {fmt(r['efficiency'], '.2f')} | {fmt(r['vs_float32'], '.2f')} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    rows = []
    for dtype in args.dtypes:
        for n in args.devices:
            spec = dict(dtype=dtype, devices=n, model=args.model, keys=experiment_keys(args, dtype), steps=args.steps,
                        batch=args.batch)
            rows.append(run_worker(spec, args.timeout))
            print(f"{dtype} x {n}: {rows[-1]['pairs_per_s']:.2f} pairs/s", file=sys.stderr)
    add_ratios(rows)
    print(f"{args.model}, {args.iters} unrolled iterations, {args.size} frames, global batch {args.batch}, median of "
          f"{args.steps} steps after a warm-up, on {rows[0]['platform']} ({rows[0]['device_kind']})\n")
    print(table(rows))
    if rows[0]["platform"] == "cpu":
        print("\nCPU devices forced by XLA_FLAGS share the same cores: 'vs 1 device' (ideally 1.00 here, n on n real "
              "devices) measures the overhead of the data-parallel program, not a speed-up.")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
