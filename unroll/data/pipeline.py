"""Training batches: a deterministic function of (seed, step), prefetched in the background.

Batch ``k`` holds samples ``k * batch_size ... (k + 1) * batch_size - 1`` of an endless stream;
in a run of ``P`` processes, process ``p`` loads only its slice ``p * batch_size / P`` onwards of
each (``batch_size / P`` samples), so the global batches do not depend on the process count.
Sample ``i`` is ``generate_pair(synthetic, (seed, i))`` for synthetic data, or, for a dataset on
disk, item ``order[i % n]`` of a per-epoch shuffle seeded by ``(seed, epoch)``, augmented with
a generator seeded by ``(seed, i)``. The randomness is thus counter-based: the pipeline's whole
state is ``(seed, position)``, which is what a checkpoint stores to resume the stream exactly.
"""

from __future__ import annotations

import collections
import concurrent.futures
from dataclasses import dataclass
from typing import Callable

import numpy as np

from unroll.config import choice
from unroll.data.augment import AugmentConfig, augment
from unroll.data.datasets import FORMATS
from unroll.data.synthetic import SyntheticConfig, generate_pair
from unroll.errors import InputError
from unroll.images import to_grey


@dataclass(frozen=True)
class TrainDataConfig:
    """Where training pairs come from.

    ``source``: ``synthetic`` (the procedural generator, ``synthetic`` section) or a dataset
    format read from ``path`` (its training split) and augmented by the ``augment`` section.
    ``batch_size``: pairs per step. ``prefetch``: batches prepared ahead in a background thread
    (and, in training, already copied to the devices).
    """

    source: str = choice("synthetic", "synthetic", *FORMATS)
    path: str = ""
    batch_size: int = 4
    prefetch: int = 2
    synthetic: SyntheticConfig = SyntheticConfig(size=(128, 160), max_translation=12.0, deform_amplitude=2.0)
    augment: AugmentConfig = AugmentConfig(crop=(128, 160))


#: Constructor arguments that select a dataset's training split (the readers default to the
#: split each benchmark evaluates on).
_TRAINING_SPLIT = {"chairs": {"split": "training"}, "things": {"split": "TRAIN"}}


def _dataset(config: TrainDataConfig):
    if not config.path:
        raise InputError(f"data.path: the folder of the {config.source} data set is required for data.source="
                         f"{config.source}")
    dataset = FORMATS[config.source](config.path, **_TRAINING_SPLIT.get(config.source, {}))
    if len(dataset) == 0:
        raise InputError(f"data.path: no {config.source} training pairs found in {config.path}")
    return dataset


class TrainingData:
    """The batch stream of ``config``; ``batch(k)`` is batch ``k`` (``k >= 0``).

    Batches are dicts of ``frame1``, ``frame2`` ``(b, h, w, channels)`` float32 (grey when
    ``channels == 1``), ``flow`` ``(b, h, w, 2)`` and ``valid`` ``(b, h, w)`` bool. Iterate with
    ``stream(start)`` to have the next batches prepared in a background thread. Process
    ``process_index`` of ``process_count`` gets its ``b = batch_size / process_count`` samples
    of each batch.
    """

    def __init__(self, config: TrainDataConfig, seed: int, channels: int, process_index: int = 0,
                 process_count: int = 1):
        if config.batch_size < 1:
            raise InputError(f"data.batch_size: must be >= 1, got {config.batch_size}")
        if config.batch_size % process_count:
            raise InputError(f"data.batch_size={config.batch_size} must be a multiple of {process_count} (the "
                             "process count) to split evenly")
        self.config, self.seed, self.channels = config, seed, channels
        self.local_size = config.batch_size // process_count
        self.first = process_index * self.local_size
        self.dataset = None if config.source == "synthetic" else _dataset(config)

    def sample(self, index: int) -> dict:
        """Sample ``index`` of the stream: ``frame1, frame2, flow, valid`` as numpy arrays."""
        if self.dataset is None:
            pair = generate_pair(self.config.synthetic, (self.seed, index))
        else:
            epoch, offset = divmod(index, len(self.dataset))
            order = np.random.default_rng((self.seed, epoch)).permutation(len(self.dataset))
            raw = self.dataset[int(order[offset])]._asdict()
            pair = augment(raw, self.config.augment, np.random.default_rng((self.seed, index)))
        frames = [np.asarray(pair[k], np.float32) for k in ("frame1", "frame2")]
        if self.channels == 1:
            frames = [to_grey(f) for f in frames]
        return {"frame1": frames[0], "frame2": frames[1], "flow": np.asarray(pair["flow"], np.float32),
                "valid": np.asarray(pair["valid"], bool)}

    def batch(self, step: int) -> dict:
        """This process's slice of batch ``step``: its ``b`` samples from
        ``step * batch_size + process_index * b`` on, stacked."""
        start = step * self.config.batch_size + self.first
        items = [self.sample(start + k) for k in range(self.local_size)]
        shapes = {item["flow"].shape for item in items}
        if len(shapes) > 1:
            raise InputError(f"data: samples of one batch differ in size {sorted(shapes)}; set data.augment.crop")
        return {key: np.stack([item[key] for item in items]) for key in items[0]}

    def stream(self, start: int, stop: int, place: Callable[[dict], dict] | None = None):
        """Yields batches ``start .. stop - 1`` in order, ``config.prefetch`` of them prepared ahead
        in a background thread, each passed through ``place`` there (e.g. the host-to-device copy
        ``unroll.distributed.put_batch``, so that the devices need not wait for it)."""

        def prepare(step: int) -> dict:
            batch = self.batch(step)
            return batch if place is None else place(batch)

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="unroll-data") as pool:
            pending = collections.deque()
            for step in range(start, stop):
                while len(pending) <= self.config.prefetch and step + len(pending) < stop:
                    pending.append(pool.submit(prepare, step + len(pending)))
                yield pending.popleft().result()
