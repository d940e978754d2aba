"""Frames in, flow out: a compiled method with input checks and separate compile timing, one
pair at a time or a batch at a time (optionally split over the devices of a mesh)."""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from unroll import distributed
from unroll.images import check_frame_pair, to_grey
from unroll.methods import MethodConfig, build, min_frame_side
from unroll.precision import float32_solution

#: Smallest frame side the derivative stencils need, whatever the pyramid says.
MIN_FRAME_SIDE = 5


class FlowEstimator:
    """A method, compiled once per input shape.

    Frames are ``(h, w, c)`` arrays of intensities on the 0..255 scale (``c`` = 1 or 3); they are
    converted to grey unless ``config.data.colour``. ``params`` (e.g. from ``load_trained``): the
    trained parameters to use; the model is then built from shapes only, without initialising it
    (seconds for the large networks), and ``params`` must hold every parameter.

    Example:
        >>> est = FlowEstimator(preset("tv-l1"))                          # doctest: +SKIP
        >>> flow = est(read_image("frame10.png"), read_image("frame11.png"))  # (h, w, 2)
    """

    def __init__(self, config: MethodConfig, seed: int = 0, params: nnx.State | None = None):
        self.config = config
        if params is None:
            self.model = build(config, seed=seed)
        else:
            self.model = nnx.eval_shape(lambda: build(config, seed=seed))
            nnx.update(self.model, params)
            missing = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(self.model))
                       if isinstance(leaf, jax.ShapeDtypeStruct)]
            if missing:
                raise ValueError(f"params lack {len(missing)} of the method's arrays, e.g. {', '.join(missing[:3])}")
        graphdef, self._state = nnx.split(self.model)

        def flow(state, frame1, frame2):
            return float32_solution(nnx.merge(graphdef, state)(frame1, frame2)).flow

        self._single = jax.jit(flow)
        self._vmapped = jax.vmap(flow, in_axes=(None, 0, 0))
        self._batch = jax.jit(self._vmapped)
        self._on_meshes: dict[Mesh, object] = {}  # the batch function split over each mesh
        self._replicated: dict[Mesh, nnx.State] = {}  # the state on each mesh, until the next ``load``
        self._compiled: dict = {}
        #: Seconds spent compiling, per (jitted function, input shape) (zero when the persistent cache had it).
        self.compile_seconds: dict[tuple, float] = {}

    def load(self, params: nnx.State) -> None:
        """Use ``params`` (the ``nnx.Param`` state of a model built from the same config) from now on;
        compiled programs are kept."""
        nnx.update(self.model, params)
        self._state = nnx.state(self.model)
        self._replicated.clear()

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

    def _executable(self, fn, frame1: np.ndarray, frame2: np.ndarray, state=None):
        """``fn`` compiled for these shapes (once); ``state`` defaults to the model's."""
        key = (fn, frame1.shape)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = fn.lower(self._state if state is None else state, frame1, frame2).compile()
            self.compile_seconds[key] = time.perf_counter() - start
        return self._compiled[key]

    def _on_mesh(self, mesh: Mesh) -> tuple:
        """The batch function split over ``mesh`` along ``b`` and the state replicated on it."""
        if mesh not in self._on_meshes:
            split = distributed.batch_sharding(mesh)
            self._on_meshes[mesh] = jax.jit(self._vmapped, in_shardings=(distributed.replicated(mesh), split, split),
                                            out_shardings=split)
        if mesh not in self._replicated:
            self._replicated[mesh] = distributed.replicate(self._state, mesh)
        return self._on_meshes[mesh], self._replicated[mesh]

    def check(self, frame1: np.ndarray, frame2: np.ndarray, names=("frame1", "frame2")) -> tuple[np.ndarray, np.ndarray]:
        """Validate and prepare a pair; raises ``InputError`` naming the problem."""
        check_frame_pair(np.asarray(frame1), np.asarray(frame2), names,
                         min_size=max(MIN_FRAME_SIDE, min_frame_side(self.config)))
        return self.prepare(frame1), self.prepare(frame2)

    def compile(self, frame1: np.ndarray, frame2: np.ndarray) -> float:
        """Compile for this pair's shape (if not yet) and return the compile time in seconds."""
        frame1, frame2 = self.check(frame1, frame2)
        self._executable(self._single, frame1, frame2)
        return self.compile_seconds[(self._single, frame1.shape)]

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

    def batch(self, frames1: np.ndarray, frames2: np.ndarray, mesh: Mesh | None = None) -> np.ndarray:
        """Flows ``(b, h, w, 2)`` for frame batches ``(b, h, w, c)``, through ``jax.vmap``; see ``timed_batch``."""
        return self.timed_batch(frames1, frames2, mesh)[0]

    def timed_batch(self, frames1, frames2, mesh: Mesh | None = None,
                    names: list[tuple[str, str]] | None = None) -> tuple[np.ndarray, float, float]:
        """Flows ``(b, h, w, 2)`` of frame batches ``(b, h, w, c)`` (arrays or lists of frames of one
        size), the compile seconds of this batch shape and the flow seconds (excluding the compile).

        With ``mesh`` (e.g. ``unroll.distributed.mesh(jax.local_devices())``) the batch is split
        over its devices along ``b``, padded first to a multiple of the device count by repeating
        its last pair (the padding's flows are dropped). ``names``: per pair, the names that input
        errors use (default ``frames1[i]``, ``frames2[i]``).
        """
        names = names or [(f"frames1[{i}]", f"frames2[{i}]") for i in range(len(frames1))]
        pairs = [self.check(a, b, n) for a, b, n in zip(frames1, frames2, names)]
        count = len(pairs)
        fn, state = (self._batch, self._state) if mesh is None else self._on_mesh(mesh)
        if mesh is not None:
            pairs += pairs[-1:] * (-count % mesh.size)
        frames1, frames2 = (np.stack(frames) for frames in zip(*pairs))
        executable = self._executable(fn, frames1, frames2, state)
        start = time.perf_counter()
        flows = np.asarray(executable(state, frames1, frames2))[:count]
        return flows, self.compile_seconds[(fn, frames1.shape)], time.perf_counter() - start
