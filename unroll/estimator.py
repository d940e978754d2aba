"""Frames in, flow out: a compiled method with input checks and separate compile timing."""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from unroll.images import check_frame_pair, to_grey
from unroll.methods import MethodConfig, build, min_frame_side

#: Smallest frame side the derivative stencils need, whatever the pyramid says.
MIN_FRAME_SIDE = 5


class FlowEstimator:
    """A method, compiled once per input shape.

    Frames are ``(h, w, c)`` arrays of intensities on the 0..255 scale (``c`` = 1 or 3); they are
    converted to grey unless ``config.data.colour``.

    Example:
        >>> est = FlowEstimator(preset("tv-l1"))                          # doctest: +SKIP
        >>> flow = est(read_image("frame10.png"), read_image("frame11.png"))  # (h, w, 2)
    """

    def __init__(self, config: MethodConfig, seed: int = 0):
        self.config = config
        self.model = build(config, seed=seed)
        graphdef, self._state = nnx.split(self.model)

        def flow(state, frame1, frame2):
            return nnx.merge(graphdef, state)(frame1, frame2).flow

        self._single = jax.jit(flow)
        self._batch = jax.jit(jax.vmap(flow, in_axes=(None, 0, 0)))
        self._compiled: dict = {}
        #: Seconds spent compiling, per input shape (zero when the persistent cache had it).
        self.compile_seconds: dict[tuple, float] = {}

    def load(self, params: nnx.State) -> None:
        """Use ``params`` (the ``nnx.Param`` state of a model built from the same config) from now on;
        compiled programs are kept."""
        nnx.update(self.model, params)
        self._state = nnx.state(self.model)

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """``(h, w, c)`` float32 frame in the channels the method uses."""
        frame = np.asarray(frame, dtype=np.float32)
        if frame.ndim == 2:
            frame = frame[..., None]
        if not self.config.data.colour:
            frame = to_grey(frame)
        elif frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        return frame

    def _executable(self, fn, frame1: np.ndarray, frame2: np.ndarray):
        key = (fn is self._batch, frame1.shape)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = fn.lower(self._state, frame1, frame2).compile()
            self.compile_seconds[key] = time.perf_counter() - start
        return self._compiled[key]

    def check(self, frame1: np.ndarray, frame2: np.ndarray, names=("frame1", "frame2")) -> tuple[np.ndarray, np.ndarray]:
        """Validate and prepare a pair; raises ``InputError`` naming the problem."""
        check_frame_pair(np.asarray(frame1), np.asarray(frame2), names,
                         min_size=max(MIN_FRAME_SIDE, min_frame_side(self.config)))
        return self.prepare(frame1), self.prepare(frame2)

    def compile(self, frame1: np.ndarray, frame2: np.ndarray) -> float:
        """Compile for this pair's shape (if not yet) and return the compile time in seconds."""
        frame1, frame2 = self.check(frame1, frame2)
        self._executable(self._single, frame1, frame2)
        return self.compile_seconds[(False, frame1.shape)]

    def timed(self, frame1: np.ndarray, frame2: np.ndarray,
              names=("frame1", "frame2")) -> tuple[np.ndarray, float, float]:
        """Flow, compile seconds (for this shape; 0 once compiled) and flow seconds (excluding the compile)."""
        self.check(frame1, frame2, names)
        compile_s = self.compile(frame1, frame2)
        start = time.perf_counter()
        flow = self(frame1, frame2, names)
        return flow, compile_s, time.perf_counter() - start

    def __call__(self, frame1: np.ndarray, frame2: np.ndarray, names=("frame1", "frame2")) -> np.ndarray:
        """Flow ``(h, w, 2)`` float32 from ``frame1`` to ``frame2``."""
        frame1, frame2 = self.check(frame1, frame2, names)
        return np.asarray(self._executable(self._single, frame1, frame2)(self._state, frame1, frame2))

    def batch(self, frames1: np.ndarray, frames2: np.ndarray) -> np.ndarray:
        """Flows ``(b, h, w, 2)`` for frame batches ``(b, h, w, c)``, through ``jax.vmap``."""
        pairs = [self.check(a, b, (f"frames1[{i}]", f"frames2[{i}]")) for i, (a, b) in enumerate(zip(frames1, frames2))]
        frames1 = np.stack([a for a, _ in pairs])
        frames2 = np.stack([b for _, b in pairs])
        return np.asarray(self._executable(self._batch, frames1, frames2)(self._state, frames1, frames2))
