"""Speed and memory of the project's RAFT against the reference PyTorch RAFT, on the same machine.

The reference is torchvision's ``raft_large`` / ``raft_small`` (random weights, ``eval()``,
``torch.no_grad()``); ours is the ``raft`` / ``raft-small`` preset through ``FlowEstimator``
(random init, seed 0), with the correlation back-end(s) of ``--correlation``. Both see the same
random frames (integers 0..255, seed fixed), start from numpy frames and end with a numpy flow:
for torch the timed call includes scaling to [-1, 1], replicate padding to a multiple of 8,
centred like RAFT's ``InputPadder`` in sintel mode (436 -> 440), and cropping the flow back.
torchvision's forward also upsamples the flow after *every* iteration (its list of predictions),
which an inference-only forward would not do: a small extra cost on the reference side.

Every configuration (framework, model, correlation, size, iterations) runs in a subprocess of its
own, so that its peak memory is its own. Times are the median of ``--repeats`` forward runs after
one warm-up run; JAX's ahead-of-time compile is reported separately. Memory: "run peak" is the
peak resident set during the warm-up and timed runs minus the resident set just before them
(after imports, model build and, for JAX, the compile); the peak is reset first through
``/proc/self/clear_refs`` (Linux), otherwise ``getrusage().ru_maxrss`` since the process start is
used and the row says so. JAX rows also give the compile's own peak (above the RSS after the model
build) and XLA's ``memory_analysis()`` of the compiled program: temp + argument + output bytes.

Threads: ``--threads N`` (default 2) pins every worker to N of the CPUs it may use before torch
or jax is imported and sets the thread counts of torch, OpenMP/MKL/OpenBLAS and XLA
(``experiments/cpu_limits.py`` says why this and not XLA flags). The "cores used" column is the
process CPU time over wall time during the timed runs: at most N, and under N when other work
shares the CPUs.

``--memory-only`` runs nothing: for RAFT with the on-the-fly correlation at ``--memory-size``
(default 1088x1920) it compiles and reports XLA's memory of the correlation alone (``build``
then one ``lookup``, at 1/8 resolution; the all-pairs back-end beside it for scale) and of the
whole forward, against the target of a correlation within 4 GiB.

Run from the repository root (needs the ``torch`` extra: ``pip install -e .[torch]``)::

    python experiments/bench_raft.py

Options: ``--models large small``, ``--sizes 368x496 436x1024`` (height x width), ``--iters 12
32``, ``--correlation all-pairs [on-the-fly]``, ``--repeats 3``, ``--threads 2``, ``--only torch``
(or ``jax``), ``--memory-only`` with ``--memory-size 1088x1920``, ``--timeout 1800`` (seconds per
worker), ``--json results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cpu_limits import pin_cpus, thread_variables

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, no install needed

#: model -> (our preset, torchvision constructor)
MODELS = {"large": ("raft", "raft_large"), "small": ("raft-small", "raft_small")}
CORRELATIONS = ("all-pairs", "on-the-fly")
SEED = 0
GIB = 2**30
MIB = 2**20
CORRELATION_TARGET = 4 * GIB


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", nargs="+", default=["368x496", "436x1024"], help="frame sizes, HEIGHTxWIDTH")
    p.add_argument("--iters", nargs="+", type=int, default=[12, 32], help="RAFT iterations (flow updates)")
    p.add_argument("--correlation", nargs="+", default=["all-pairs"], choices=CORRELATIONS,
                   help="our correlation back-end(s); torchvision's is all-pairs")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    p.add_argument("--threads", type=int, default=2, help="CPUs/threads for both frameworks")
    p.add_argument("--only", choices=("torch", "jax"), help="run one framework only")
    p.add_argument("--memory-only", action="store_true",
                   help="compile only: XLA memory of the on-the-fly correlation and of the whole forward")
    p.add_argument("--memory-size", default="1088x1920", help="frame size for --memory-only, HEIGHTxWIDTH")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker subprocess")
    p.add_argument("--json", type=Path, help="also save all results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one configuration, as JSON
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


# ---------------------------------------------------------------- measurements inside a worker


def rss_kib() -> dict:
    """Current (``VmRSS``) and peak (``VmHWM``) resident set of this process, KiB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        return {"now": int(status["VmRSS"].split()[0]), "peak": int(status["VmHWM"].split()[0])}
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"now": peak, "peak": peak}


def reset_peak() -> bool:
    """Resets this process's peak RSS (``VmHWM``, which ``ru_maxrss`` reads); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakAbove:
    """Peak RSS above the RSS at entry, MiB, over the ``with`` block."""

    def __enter__(self):
        self.reset = reset_peak()
        self.base = rss_kib()["now"]
        return self

    def __exit__(self, *exc):
        peak = rss_kib()["peak"] if self.reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mib = max(0, peak - self.base) / 1024


def frames(h: int, w: int):
    """Two random ``(h, w, 3)`` float32 frames of integers 0..255 (fixed seed)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    return tuple(rng.integers(0, 256, (h, w, 3)).astype(np.float32) for _ in range(2))


def time_runs(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds of ``repeats`` calls of ``fn`` (returning seconds, or None to time it
    here) after one warm-up call, and the CPU time / wall time of the timed calls."""
    fn()
    times, cpu0, wall0 = [], time.process_time(), time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        seconds = fn()
        times.append(seconds if seconds is not None else time.perf_counter() - start)
    return statistics.median(times), (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def xla_memory(compiled) -> dict:
    """XLA's ``memory_analysis()`` of a compiled program, bytes (``total`` = temp + argument + output)."""
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output", "alias")}
    out["total"] = out["temp"] + out["argument"] + out["output"]
    return out


def sintel_padding(h: int, w: int) -> tuple[int, int, int, int]:
    """RAFT's ``InputPadder`` in sintel mode as ``F.pad`` widths (left, right, top, bottom): centred,
    up to multiples of 8."""
    ph, pw = (-h) % 8, (-w) % 8
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def torch_worker(spec: dict) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchvision.models import optical_flow

    torch.set_num_threads(spec["threads"])
    try:
        torch.set_num_interop_threads(spec["threads"])
    except RuntimeError:  # already set in this process
        pass
    torch.manual_seed(SEED)
    model = getattr(optical_flow, MODELS[spec["model"]][1])(weights=None, progress=False).eval()
    h, w = spec["size"]
    f1, f2 = frames(h, w)
    left, right, top, bottom = sintel_padding(h, w)

    def to_input(frame):
        x = torch.from_numpy(frame).permute(2, 0, 1)[None] / 127.5 - 1.0  # [-1, 1], as torchvision expects
        return F.pad(x, (left, right, top, bottom), mode="replicate") if left + right + top + bottom else x

    def forward():
        with torch.no_grad():
            flow = model(to_input(f1), to_input(f2), num_flow_updates=spec["iters"])[-1]
        flow = flow[0, :, top:top + h, left:left + w].permute(1, 2, 0).numpy()
        assert flow.shape == (h, w, 2) and np.isfinite(flow).all()

    with PeakAbove() as run:
        seconds, cores = time_runs(forward, spec["repeats"])
    return dict(seconds=seconds, cores_used=cores, run_peak_mib=run.mib, peak_reset=run.reset,
                threads=torch.get_num_threads(), padded=[h + top + bottom, w + left + right])


def jax_estimator(spec: dict):
    from unroll.config import override
    from unroll.estimator import FlowEstimator
    from unroll.methods import preset

    config = override(preset(MODELS[spec["model"]][0]),
                      [f"solver.num_iters={spec['iters']}", f"model.correlation={spec['correlation']}"])
    return FlowEstimator(config)


def jax_worker(spec: dict) -> dict:
    import numpy as np

    est = jax_estimator(spec)
    h, w = spec["size"]
    f1, f2 = frames(h, w)
    with PeakAbove() as compile_peak:
        executable = est._executable(est._single, est.prepare(f1), est.prepare(f2))
    memory = xla_memory(executable)

    compile_s = []  # what est.timed reports: the compile time recorded for this shape

    def forward():
        flow, seconds_compiling, flow_s = est.timed(f1, f2)
        assert flow.shape == (h, w, 2) and np.isfinite(flow).all()
        compile_s.append(seconds_compiling)
        return flow_s

    with PeakAbove() as run:
        seconds, cores = time_runs(forward, spec["repeats"])
    return dict(seconds=seconds, cores_used=cores, compile_s=compile_s[0], run_peak_mib=run.mib,
                compile_peak_mib=compile_peak.mib, peak_reset=run.reset, xla=memory)


def correlation_parts(est, spec: dict):
    """(levels, radius, feature channels) of the model's correlation, read from the built model
    where it can be found, else from the config and the published sizes."""
    from flax import nnx

    corr, channels = None, None
    for _, node in nnx.iter_graph(est.model):
        if corr is None and all(hasattr(node, a) for a in ("build", "lookup", "levels", "radius")):
            corr = node
        head = getattr(getattr(node, "encoder", None), "head", None)  # the data term's feature encoder
        if channels is None and hasattr(node, "correlation") and hasattr(head, "out_features"):
            channels = int(head.out_features)
    m = est.config.model
    levels = corr.levels if corr is not None else m.corr_levels
    radius = corr.radius if corr is not None else (m.corr_radius or (4 if spec["model"] == "large" else 3))
    return levels, radius, channels or (256 if spec["model"] == "large" else 128)


def memory_worker(spec: dict) -> dict:
    """Compiles, never runs: XLA memory of the correlation (build + one lookup) and of the whole forward."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from learned.raft import correlation as corr_module

    h, w = spec["size"]
    est = jax_estimator(spec)
    levels, radius, d = correlation_parts(est, spec)
    fh, fw = -(-h // 8), -(-w // 8)  # features at 1/8 of the (padded) frame
    feature = jax.ShapeDtypeStruct((fh, fw, d), jnp.float32)
    coords = jax.ShapeDtypeStruct((fh, fw, 2), jnp.float32)
    backends = {"on-the-fly": corr_module.OnTheFlyCorrelation, "all-pairs": corr_module.AllPairsCorrelation}
    out = dict(features=[fh, fw, d], levels=levels, radius=radius, correlation={})
    for name, backend in backends.items():
        corr = backend(levels, radius)
        start = time.perf_counter()
        program = jax.jit(lambda a, b, c, corr=corr: corr.lookup(corr.build(a, b), c))
        compiled = program.lower(feature, feature, coords).compile()
        out["correlation"][name] = dict(xla=xla_memory(compiled), compile_s=time.perf_counter() - start)
    zeros = est.prepare(np.zeros((h, w, 3), np.float32))
    start = time.perf_counter()
    compiled = est._executable(est._single, zeros, zeros)
    out["forward"] = dict(xla=xla_memory(compiled), compile_s=time.perf_counter() - start)
    return out


def worker_main(spec: dict) -> None:
    cpus = pin_cpus(spec["threads"])
    run = {"torch": torch_worker, "jax": jax_worker, "memory": memory_worker}[spec["framework"]]
    result = run(spec)
    result["cpus"] = cpus
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the driver


def run_worker(spec: dict, args) -> dict:
    """Runs one configuration in a fresh interpreter; its result, or ``{"error": ...}``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=thread_variables(spec["threads"]), cwd=ROOT, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return {"error": (lines[-1] if lines else f"exit code {proc.returncode}")[:300]}


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "torch", "torchvision", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def label(r: dict) -> str:
    if r["framework"] == "torch":
        return f"torch {MODELS[r['model']][1]}"
    return f"unroll {MODELS[r['model']][0]} ({r['correlation']})"


def benchmark(args, notes: list) -> dict:
    from tqdm import tqdm

    sizes = [parse_size(s) for s in args.sizes]
    frameworks = [f for f in ("torch", "jax") if args.only in (None, f)]
    specs = []
    for model in args.models:
        for size in sizes:
            for iters in args.iters:
                base = dict(model=model, size=size, iters=iters, threads=args.threads, repeats=args.repeats)
                if "torch" in frameworks:
                    specs.append(dict(base, framework="torch", correlation="all-pairs"))
                if "jax" in frameworks:
                    specs.extend(dict(base, framework="jax", correlation=c) for c in args.correlation)
    results = []
    for spec in tqdm(specs, desc="bench", leave=False):
        result = run_worker(spec, args)
        if "error" in result:
            h, w = spec["size"]
            notes.append(f"{label(spec)} {h}x{w} {spec['iters']} iters failed: {result['error']}")
        if result.get("peak_reset") is False:
            notes.append(f"{label(spec)}: peak RSS could not be reset, its run peak counts from process start")
        results.append(dict(spec, **result))

    print("## All runs\n")
    rows = []
    for r in results:
        xla = r.get("xla")
        rows.append([label(r), f"{r['size'][0]}x{r['size'][1]}", r["iters"], fmt(r.get("seconds"), ".3f"),
                     fmt(r.get("compile_s"), ".1f"), fmt(r.get("run_peak_mib"), ".0f"),
                     fmt(r.get("compile_peak_mib"), ".0f"), "-" if xla is None else f"{xla['total'] / MIB:.0f}",
                     "-" if xla is None else f"{xla['temp'] / MIB:.0f}", fmt(r.get("cores_used"), ".2f")])
    print(md_table(["model", "size (HxW)", "iters", "time s (median)", "compile s", "run peak MiB",
                    "compile peak MiB", "XLA temp+arg+out MiB", "XLA temp MiB", "cores used"], rows) + "\n")

    comparison = []
    by = {(r["framework"], r["model"], tuple(r["size"]), r["iters"], r["correlation"]): r for r in results}
    for r in results:
        if r["framework"] != "jax":
            continue
        ref = by.get(("torch", r["model"], tuple(r["size"]), r["iters"], "all-pairs"))
        if ref is None or r.get("seconds") is None or ref.get("seconds") is None:
            continue
        comparison.append(dict(model=r["model"], correlation=r["correlation"], size=r["size"], iters=r["iters"],
                               torch_s=ref["seconds"], jax_s=r["seconds"], ratio=r["seconds"] / ref["seconds"],
                               torch_peak_mib=ref.get("run_peak_mib"), jax_peak_mib=r.get("run_peak_mib")))
    if comparison:
        print("## unroll / torchvision (time ratio < 1: unroll faster)\n")
        print(md_table(["model", "correlation", "size (HxW)", "iters", "torch s", "unroll s", "unroll / torch",
                        "torch run peak MiB", "unroll run peak MiB"],
                       [[c["model"], c["correlation"], f"{c['size'][0]}x{c['size'][1]}", c["iters"],
                         f"{c['torch_s']:.3f}", f"{c['jax_s']:.3f}", f"{c['ratio']:.2f}x",
                         fmt(c["torch_peak_mib"], ".0f"), fmt(c["jax_peak_mib"], ".0f")] for c in comparison]) + "\n")
    return dict(results=results, comparison=comparison)


def memory_only(args, notes: list) -> dict:
    from tqdm import tqdm

    h, w = parse_size(args.memory_size)
    results = []
    for model in tqdm(args.models, desc="compile", leave=False):
        for iters in args.iters:
            spec = dict(framework="memory", model=model, size=[h, w], iters=iters, threads=args.threads,
                        correlation="on-the-fly")
            result = run_worker(spec, args)
            if "error" in result:
                notes.append(f"{MODELS[model][0]} {iters} iters failed: {result['error']}")
            results.append(dict(spec, **result))

    print(f"## Compiled memory at {h}x{w}, nothing run (XLA memory_analysis, MiB)\n")
    rows = []
    for r in results:
        if "error" in r:
            continue
        name, (fh, fw, d) = MODELS[r["model"]][0], r["features"]
        part = f"correlation build + lookup ({fh}x{fw}x{d}, {r['levels']} levels, radius {r['radius']})"
        for backend in ("on-the-fly", "all-pairs"):
            m = r["correlation"][backend]["xla"]
            within = "yes" if m["total"] <= CORRELATION_TARGET else "no"
            rows.append([name, r["iters"], f"{part}, {backend}", f"{m['temp'] / MIB:.0f}", f"{m['argument'] / MIB:.0f}",
                         f"{m['output'] / MIB:.0f}", f"{m['total'] / MIB:.0f}", within])
        m = r["forward"]["xla"]
        rows.append([name, r["iters"], "whole forward, on-the-fly", f"{m['temp'] / MIB:.0f}",
                     f"{m['argument'] / MIB:.0f}", f"{m['output'] / MIB:.0f}", f"{m['total'] / MIB:.0f}",
                     "yes" if m["total"] <= CORRELATION_TARGET else "no"])
    print(md_table(["model", "iters", "program", "temp", "argument", "output", "total", "within 4 GiB"], rows) + "\n")
    return dict(memory=results)


def main():
    args = parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    notes = []
    info = versions()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.threads > cores:
        notes.append(f"--threads {args.threads} > {cores} usable CPUs: pinned to all {cores}")
    if args.only != "jax" and not args.memory_only and info["torch"] == "not installed":
        notes.append("torch not installed (pip install -e .[torch]): torch rows fail")
    title = "RAFT compiled memory" if args.memory_only else "RAFT benchmark: unroll vs torchvision"
    print(f"# {title}\n")
    print(f"- machine: {platform.machine()}, {cores} CPU cores usable ({os.cpu_count()} total); "
          f"each configuration in its own process, pinned to {min(args.threads, cores)} CPU(s), "
          f"{args.threads} thread(s) (torch.set_num_threads, NPROC for XLA)")
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if not args.memory_only:
        print(f"- time: median of {args.repeats} forward runs after 1 warm-up, numpy frames in, numpy flow out; "
              "JAX compile separate")
        print("- memory: run peak = peak RSS over the runs minus RSS before them (after imports, build and compile); "
              "XLA = compiled memory_analysis()")
        print("- input: random integers 0..255 (seed 0), (H, W, 3); torch: scaled to [-1, 1] and replicate-padded "
              "(centred) to multiples of 8\n")
    out = memory_only(args, notes) if args.memory_only else benchmark(args, notes)
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.write_text(json.dumps(dict(info=dict(versions=info, cores=cores, threads=args.threads,
                                                       repeats=args.repeats, notes=notes), **out), indent=2))
        print(f"results saved to {args.json}")


if __name__ == "__main__":
    main()
