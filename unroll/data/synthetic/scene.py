"""`Scene`: a stack of layers, its exact renderer, and its frames, flow and occlusion mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unroll.data.synthetic.layer import Layer
from unroll.data.synthetic.shapes import Plane
from unroll.errors import InputError

BAND = 8192
"""Pixels `Scene.pair` works on at a time. NumPy's temporaries then stay small enough to be
recycled by the allocator and to stay in the CPU cache; on whole frames, where every temporary
is fresh memory, generation is several times slower."""


@dataclass(frozen=True, eq=False)
class Scene:
    """Layers from bottom (the background, covering everything) to top, and the frame size.

    Attributes:
        layers: The layers; the first is the background, with shape `Plane`.
        size: ``(height, width)`` of the frames.
    """

    layers: tuple[Layer, ...]
    size: tuple[int, int]

    def __post_init__(self):
        if not self.layers or not isinstance(self.layers[0].shape, Plane):
            raise InputError("Scene.layers: the first layer must be a Plane (the background)")

    def locate(self, points: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """The topmost layer at each point of `frame` (1 or 2) and its texture coordinates there.

        Args:
            points: (2, N) float64 rows ``x`` and ``y``, in pixels.
            frame: 1 or 2.

        Returns:
            ``(ids, coords)``: (N,) index into `layers`, (2, N) texture coordinates in that layer.
        """
        if frame not in (1, 2):
            raise InputError(f"frame: must be 1 or 2, got {frame!r}")
        ids, coords = np.zeros(points.shape[1], np.intp), self.layers[0].to_texture(points, frame)
        for index, layer, near in self._near(points, frame, enumerate(self.layers[1:], 1)):
            local = layer.to_texture(np.take(points, near, 1), frame)
            hit = layer.shape.contains(local)
            ids[near[hit]] = index
            _scatter(coords, near[hit], local[:, hit])
        return ids, coords

    def colours(self, ids: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """Texture lookup: (N,) layer ids and (2, N) texture coordinates -> (3, N) float32."""
        out = np.empty((3, len(ids)), np.float32)
        for layer, mine in self._groups(ids):
            _scatter(out, mine, layer.texture.sample(np.take(coords, mine, 1)))
        return out

    def render(self, points: np.ndarray, frame: int) -> np.ndarray:
        """Colours (3, N) float32 of `frame` (1 or 2) at (2, N) points: the exact renderer."""
        return self.colours(*self.locate(points, frame))

    def pair(self) -> dict[str, np.ndarray]:
        """Both frames, the flow and the valid and occlusion masks, without photometric changes.

        Returns:
            ``frame1``, ``frame2``: (H, W, 3) float32; ``flow``: (H, W, 2) float32; ``valid``:
            (H, W) bool, all True (the flow is exact everywhere); ``occluded``: (H, W) bool, True
            where the texture point of the pixel is not visible in frame 2: outside the image
            ``[0, W - 1] x [0, H - 1]`` or covered by a layer above its own.
        """
        h, w = self.size
        frame1, frame2 = np.empty((h * w, 3), np.float32), np.empty((h * w, 3), np.float32)
        flow, occluded = np.empty((h * w, 2), np.float32), np.empty(h * w, bool)
        for start in range(0, h * w, BAND):
            band = slice(start, min(start + BAND, h * w))
            index = np.arange(band.start, band.stop)
            points = np.stack([index % w, index // w]).astype(np.float64)
            colours1, colours2, target, occluded[band] = self._pixels(points)
            frame1[band], frame2[band], flow[band] = colours1.T, colours2.T, (target - points).T
        return {"frame1": frame1.reshape(h, w, 3), "frame2": frame2.reshape(h, w, 3),
                "flow": flow.reshape(h, w, 2), "valid": np.ones((h, w), bool),
                "occluded": occluded.reshape(h, w)}

    def _pixels(self, points: np.ndarray):
        """Frame-1 and frame-2 colours (3, N), frame-2 positions (2, N) and `occluded` (N,) at
        (2, N) pixel positions."""
        ids, coords = self.locate(points, 1)
        target = np.empty_like(points)
        for layer, mine in self._groups(ids):
            _scatter(target, mine, layer.to_frame2(np.take(coords, mine, 1)))
        h, w = self.size
        x, y = target
        inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        occluded = ~inside | self._hidden(target, ids)
        return self.colours(ids, coords), self.render(points, 2), target, occluded

    def _hidden(self, points: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(N,) bool: a layer above ``ids`` covers (2, N) `points` in frame 2.

        Layer ``ids[i]`` itself covers ``points[i]`` when that is where one of its texture points
        moved, so this tells whether that texture point is on top there.
        """
        hidden = np.zeros(points.shape[1], bool)
        for index, layer, near in self._near(points, 2, enumerate(self.layers[1:], 1)):
            near = near[ids[near] < index]
            hidden[near[layer.shape.contains(layer.to_texture(np.take(points, near, 1), 2))]] = True
        return hidden

    def _near(self, points: np.ndarray, frame: int, layers):
        """Yields ``(index, layer, near)`` for each of the ``(index, layer)`` pairs whose box in
        `frame` holds any of the (2, N) points; ``near``: the indices of those points."""
        (xlow, ylow), (xhigh, yhigh) = points.min(1, initial=np.inf), points.max(1, initial=-np.inf)
        x, y = points
        for index, layer in layers:
            x0, y0, x1, y1 = layer.box(frame)
            if x0 <= xhigh and x1 >= xlow and y0 <= yhigh and y1 >= ylow:  # cheap test first
                near = np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
                if near.size:
                    yield index, layer, near

    def _groups(self, ids: np.ndarray):
        """Yields ``(layer, mine)`` for each layer in the (N,) `ids`; ``mine``: its indices."""
        for index in np.flatnonzero(np.bincount(ids, minlength=len(self.layers))):
            yield self.layers[index], np.flatnonzero(ids == index)


def _scatter(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """``out[:, index] = values``, one row at a time: several times faster in NumPy."""
    for row, value in zip(out, values):
        row[index] = value
