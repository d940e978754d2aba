"""`generate_pair` and `SyntheticDataset`: random scenes rendered into training pairs, with
photometric changes applied afterwards."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unroll.data.synthetic.config import SyntheticConfig, _is_int
from unroll.data.synthetic.sampling import sample_scene
from unroll.errors import InputError

def _photometric(config: SyntheticConfig, rng: np.random.Generator, frame1, frame2):
    """Blurs both (H, W, 3) frames alike, then changes each one's contrast and brightness and
    adds noise to it, in place where it can; returns the two frames."""
    blur = rng.uniform(0, config.blur_sigma)
    noise = rng.uniform(0, config.noise_sigma)
    out = []
    for frame in (frame1, frame2):
        if blur > 0:
            frame = ndimage.gaussian_filter(frame, (blur, blur, 0), mode="nearest")
        gain = 1.0 + rng.uniform(-config.contrast, config.contrast)
        frame *= np.float32(gain)
        frame += np.float32(rng.uniform(-config.brightness, config.brightness) + 127.5 * (1 - gain))
        if noise > 0:
            frame += np.float32(noise) * rng.standard_normal(frame.shape, np.float32)
        out.append(np.clip(frame, 0, 255, out=frame))
    return out


def generate_pair(config: SyntheticConfig, seed: int | Sequence[int]) -> dict[str, np.ndarray]:
    """A random training pair with exact ground-truth flow.

    The scene and the photometric changes draw from separate streams of ``seed``, so turning
    photometric changes on or off leaves the flow unchanged.

    Args:
        config: What to draw from.
        seed: A non-negative integer, or a sequence of them (as for ``np.random.SeedSequence``);
            equal seeds give identical pairs.

    Returns:
        ``frame1``, ``frame2``: (H, W, 3) float32 on 0..255; ``flow``: (H, W, 2) float32
        ``(u, v)``; ``valid``: (H, W) bool, all True (the flow is known everywhere);
        ``occluded``: (H, W) bool, True where the pixel is hidden in frame 2 or leaves the image.

    Example:
        >>> pair = generate_pair(SyntheticConfig(size=(64, 80), num_layers=(1, 1)), seed=3)
        >>> sorted(pair)
        ['flow', 'frame1', 'frame2', 'occluded', 'valid']
    """
    if not isinstance(config, SyntheticConfig):
        raise InputError(f"config: expected a SyntheticConfig, got {type(config).__name__}")
    try:
        scene_seed, photo_seed = np.random.SeedSequence(seed).spawn(2)
    except (TypeError, ValueError) as error:
        raise InputError(f"seed: expected non-negative integers, got {seed!r} ({error})") from None
    pair = sample_scene(config, np.random.default_rng(scene_seed)).pair()
    pair["frame1"], pair["frame2"] = _photometric(config, np.random.default_rng(photo_seed),
                                                  pair["frame1"], pair["frame2"])
    return pair


class SyntheticDataset:
    """An indexable stream of synthetic pairs: item ``i`` is ``generate_pair(config, (seed, i))``.

    Example:
        >>> data = SyntheticDataset(SyntheticConfig(size=(64, 80)), seed=1, length=100)
        >>> len(data), data.batch([0, 5])["flow"].shape
        (100, (2, 64, 80, 2))
    """

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), seed: int = 0,
                 length: int = 1_000_000):
        if not isinstance(config, SyntheticConfig):
            raise InputError(f"config: expected a SyntheticConfig, got {type(config).__name__}")
        if not _is_int(seed) or seed < 0:
            raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
        if not _is_int(length) or length < 0:
            raise InputError(f"length: expected a non-negative integer, got {length!r}")
        self.config, self.seed, self.length = config, int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Pair ``index`` (negative counts from the end); IndexError outside the dataset."""
        if not _is_int(index):
            raise InputError(f"index: expected an integer, got {index!r}")
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} pairs")
        return generate_pair(self.config, (self.seed, int(index) % self.length))

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Pairs `indices` stacked: frames (B, H, W, 3), flow (B, H, W, 2), valid and occluded
        (B, H, W)."""
        items = [self[i] for i in indices]
        if not items:
            raise InputError("indices: expected at least one index")
        return {key: np.stack([item[key] for item in items]) for key in items[0]}

    def __repr__(self) -> str:
        return f"SyntheticDataset(seed={self.seed}, length={self.length}, config={self.config})"
