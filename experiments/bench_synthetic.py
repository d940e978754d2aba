"""Speed of the synthetic pair generator (``unroll.data.synthetic``) at a few frame sizes.

For each size it generates ``--pairs`` pairs with the default ``SyntheticConfig`` (seeds 0, 1, ...,
after one warm-up pair) in this process, one at a time, and prints the median wall time per pair,
the resulting pairs/s, and, as a sanity check, the mean |flow| and the share of occluded pixels.

Run from the repository root::

    python experiments/bench_synthetic.py

Options: ``--sizes 256x320 384x512`` (height x width), ``--pairs 30``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

from unroll.data.synthetic import SyntheticConfig, generate_pair


def bench(size: tuple[int, int], pairs: int) -> dict:
    """Median seconds per pair, mean |flow| and occluded share over `pairs` pairs of `size`."""
    config = dataclasses.replace(SyntheticConfig(), size=size)
    generate_pair(config, pairs)  # warm-up
    times, speeds, occluded = [], [], []
    for seed in range(pairs):
        start = time.perf_counter()
        pair = generate_pair(config, seed)
        times.append(time.perf_counter() - start)
        speeds.append(float(np.hypot(*np.moveaxis(pair["flow"], -1, 0)).mean()))
        occluded.append(float(pair["occluded"].mean()))
    return {"seconds": statistics.median(times), "flow": np.mean(speeds), "occluded": np.mean(occluded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["128x160", "256x320", "384x512"],
                        help="frame sizes, HEIGHTxWIDTH")
    parser.add_argument("--pairs", type=int, default=30, help="pairs timed per size")
    args = parser.parse_args()
    print(f"{'size':>9}  {'ms/pair':>8}  {'pairs/s':>8}  {'mean |flow|':>11}  {'occl.':>6}")
    for text in args.sizes:
        size = tuple(int(n) for n in text.lower().split("x"))
        result = bench(size, args.pairs)
        print(f"{text:>9}  {1e3 * result['seconds']:8.1f}  {1 / result['seconds']:8.1f}  "
              f"{result['flow']:9.2f} px  {100 * result['occluded']:5.1f}%")


if __name__ == "__main__":
    main()
