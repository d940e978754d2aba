"""Readers for the standard optical-flow dataset layouts.

Each reader lists its files once, at construction (sorted, so the order is deterministic and the
same on every machine), and reads a sample's files only when it is indexed::

    >>> sintel = Sintel("MPI-Sintel-complete", pass_name="final")     # doctest: +SKIP
    >>> len(sintel), sintel[0].name                                     # doctest: +SKIP
    (1041, 'alley_1/frame_0001')

Conventions: frames ``(h, w, c)`` float32 on 0..255; flow ``(h, w, 2)`` float32 ``(u, v)`` in
pixels, pixel ``(x, y)`` of frame 1 moves to ``(x + u, y + v)`` in frame 2; masks ``(h, w)``
bool. The defaults pick the split each benchmark is evaluated on, which is what
``unroll eval --format NAME`` reads; pass ``split="train"`` (or ``"TRAIN"``) for training.

Datasets: FlyingChairs (Dosovitskiy et al., ICCV 2015), FlyingThings3D (Mayer et al., CVPR 2016),
MPI-Sintel (Butler et al., ECCV 2012), KITTI 2012 (Geiger et al., CVPR 2012) and 2015 (Menze &
Geiger, CVPR 2015), HD1K (Kondermann et al., CVPRW 2016), Middlebury (Baker et al., IJCV 2011).
"""

from __future__ import annotations

import abc
import os
import re
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from unroll.errors import InputError
from unroll.flow_io import read_flow
from unroll.images import read_image

__all__ = ["Sample", "Pair", "FlowDataset", "Middlebury", "Sintel", "KITTI", "FlyingChairs",
           "FlyingThings3D", "HD1K", "FORMATS", "find_sequences", "load", "occlusion_split"]

#: Files of one sequence folder in the Middlebury layout.
FRAME1, FRAME2, GROUND_TRUTH = "frame10.png", "frame11.png", "flow10.flo"


class Sample(NamedTuple):
    """One frame pair with its ground truth. ``sample._asdict()`` is what ``augment`` takes."""

    name: str
    frame1: np.ndarray               # (h, w, c) float32, 0..255
    frame2: np.ndarray               # (h, w, c) float32, 0..255
    flow: np.ndarray                 # (h, w, 2) float32 (u, v); arbitrary where not valid
    valid: np.ndarray                # (h, w) bool, ground truth known
    occluded: np.ndarray | None = None   # (h, w) bool, Sintel: pixels of frame 1 hidden in frame 2
    noc_valid: np.ndarray | None = None  # (h, w) bool, KITTI: valid in flow_noc (not occluded)


class Pair(NamedTuple):
    """The files of one sample; ``load`` reads them."""

    name: str
    frame1: Path
    frame2: Path
    flow: Path                       # .flo, KITTI .png or .pfm
    occluded: Path | None = None     # grey PNG, 255 = occluded
    flow_noc: Path | None = None     # KITTI .png whose valid channel marks non-occluded pixels


def load(pair: Pair) -> Sample:
    """Reads the files of ``pair``; raises ``InputError`` naming a file that is missing or bad."""
    frame1, frame2 = read_image(pair.frame1), read_image(pair.frame2)
    size = frame1.shape[:2]
    flow, valid = read_flow(pair.flow)
    occluded = noc_valid = None
    if pair.occluded is not None:
        occluded = read_image(pair.occluded)[:, :, 0] > 127
    if pair.flow_noc is not None:
        noc_valid = read_flow(pair.flow_noc)[1]
    for path, array in ((pair.frame2, frame2), (pair.flow, flow), (pair.occluded, occluded),
                        (pair.flow_noc, noc_valid)):
        if array is not None and array.shape[:2] != size:
            raise InputError(f"{path}: size {array.shape[:2]} differs from {pair.frame1} of size {size}")
    return Sample(pair.name, frame1, frame2, flow, valid, occluded, noc_valid)


def occlusion_split(sample: Sample) -> dict[str, np.ndarray]:
    """``{"noc": mask, "occ": mask}``: the valid pixels that stay visible in frame 2 and those that
    do not, from Sintel's ``occluded`` or KITTI's ``noc_valid``; ``{}`` if the sample has neither."""
    if sample.occluded is not None:
        return {"noc": sample.valid & ~sample.occluded, "occ": sample.valid & sample.occluded}
    if sample.noc_valid is not None:
        return {"noc": sample.valid & sample.noc_valid, "occ": sample.valid & ~sample.noc_valid}
    return {}


class FlowDataset(abc.ABC):
    """Frame pairs with ground truth, listed at construction and read when indexed.

    Subclasses set their options, then call ``super().__init__(root)``, which calls ``_find``.
    """

    #: The folder layout, for error messages.
    layout: ClassVar[str]
    #: Whether the ground truth is sparse (valid at scattered pixels), as KITTI's and HD1K's are;
    #: pass it to ``AugmentConfig(sparse=...)``.
    sparse: ClassVar[bool] = False

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.pairs: list[Pair] = self._find()

    @abc.abstractmethod
    def _find(self) -> list[Pair]:
        """The pairs under ``self.root``, sorted; raises ``InputError`` naming the folder if none."""

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        return load(self.pairs[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} pairs)"


def _folder(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{path}: folder not found (expected the layout {layout})")
    return path


def _found(pairs: list[Pair], folder: Path, layout: str) -> list[Pair]:
    if not pairs:
        raise InputError(f"{folder}: no frame pairs found (expected the layout {layout})")
    return pairs


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir())


_NUMBERED = re.compile(r"(.*?)(\d+)")


def _consecutive(folder: Path, suffix: str = ".png") -> list[tuple[Path, Path]]:
    """Pairs of files ``PREFIX<n>SUFFIX``, ``PREFIX<n+1>SUFFIX`` in ``folder``, sorted by (prefix, n).

    The number is the last run of digits of the name; its width may differ between the two.
    """
    numbered = {}
    for name in os.listdir(folder):
        match = _NUMBERED.fullmatch(name[: -len(suffix)]) if name.endswith(suffix) else None
        if match:
            numbered[match[1], int(match[2])] = folder / name
    return [(path, numbered[prefix, n + 1]) for (prefix, n), path in sorted(numbered.items())
            if (prefix, n + 1) in numbered]


def find_sequences(root: str | os.PathLike) -> list[Path]:
    """The Middlebury sequence folders at ``root``, sorted by name.

    A sequence folder holds ``frame10.png`` (and ``frame11.png``, ``flow10.flo``). ``root`` is
    either one such folder or a folder of them.

    Raises:
        InputError: If ``root`` is not a directory or holds no sequence folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data directory not found")
    if (root / FRAME1).is_file():
        return [root]
    sequences = sorted(p for p in root.iterdir() if (p / FRAME1).is_file())
    if not sequences:
        raise InputError(f"{root}: no sequence folders found (each needs {FRAME1}, {FRAME2}, {GROUND_TRUTH})")
    return sequences


class Middlebury(FlowDataset):
    """Middlebury: ``SEQUENCE/frame10.png, frame11.png, flow10.flo``; ``root`` may be one sequence.

    Sample names are the sequence folder names.
    """

    layout = f"SEQUENCE/{FRAME1}, {FRAME2}, {GROUND_TRUTH}"

    def _find(self) -> list[Pair]:
        return [Pair(folder.resolve().name, folder / FRAME1, folder / FRAME2, folder / GROUND_TRUTH)
                for folder in find_sequences(self.root)]


class Sintel(FlowDataset):
    """MPI-Sintel training set: ``training/PASS/SCENE/frame_NNNN.png``, ``training/flow/SCENE/
    frame_NNNN.flo`` and, when the folder exists, ``training/occlusions/SCENE/frame_NNNN.png``
    (``Sample.occluded``). ``pass_name``: ``"clean"`` or ``"final"``.

    Sample names are ``SCENE/frame_NNNN`` (frame 1 of the pair).
    """

    layout = ("training/clean|final/SCENE/frame_NNNN.png, training/flow/SCENE/frame_NNNN.flo, "
              "[training/occlusions/SCENE/frame_NNNN.png]")
    PASSES = ("clean", "final")

    def __init__(self, root: str | os.PathLike, pass_name: str = "clean"):
        if pass_name not in self.PASSES:
            raise InputError(f"pass_name: {pass_name!r} is not one of {', '.join(self.PASSES)}")
        self.pass_name = pass_name
        super().__init__(root)

    def _find(self) -> list[Pair]:
        training = self.root / "training"
        frames = _folder(training / self.pass_name, self.layout)
        flows = _folder(training / "flow", self.layout)
        occlusions = training / "occlusions" if (training / "occlusions").is_dir() else None
        pairs = []
        for scene in _subfolders(frames):
            for frame1, frame2 in _consecutive(scene):
                occluded = occlusions / scene.name / frame1.name if occlusions else None
                pairs.append(Pair(f"{scene.name}/{frame1.stem}", frame1, frame2,
                                  flows / scene.name / f"{frame1.stem}.flo", occluded))
        return _found(pairs, frames, self.layout)


class KITTI(FlowDataset):
    """KITTI 2015 or 2012 training set: ``training/image_2`` (2015) or ``training/colored_0``
    (2012) ``/NNNNNN_10.png, NNNNNN_11.png``, ground truth ``training/flow_occ/NNNNNN_10.png``
    and, when the folder exists, ``training/flow_noc/NNNNNN_10.png`` (``Sample.noc_valid``).

    Sample names are ``NNNNNN_10``.
    """

    layout = ("training/image_2|colored_0/NNNNNN_10.png, NNNNNN_11.png, training/flow_occ/NNNNNN_10.png, "
              "[training/flow_noc/NNNNNN_10.png]")
    sparse = True
    #: Frame folders of KITTI 2015 and of KITTI 2012, tried in this order.
    IMAGE_FOLDERS = ("image_2", "colored_0")

    def _find(self) -> list[Pair]:
        training = _folder(self.root / "training", self.layout)
        images = next((training / f for f in self.IMAGE_FOLDERS if (training / f).is_dir()), None)
        if images is None:
            raise InputError(f"{training}: neither {' nor '.join(self.IMAGE_FOLDERS)} found "
                             f"(expected the layout {self.layout})")
        flow_occ = _folder(training / "flow_occ", self.layout)
        flow_noc = training / "flow_noc" if (training / "flow_noc").is_dir() else None
        pairs = [Pair(frame1.stem, frame1, frame2, flow_occ / frame1.name,
                      flow_noc=flow_noc / frame1.name if flow_noc else None)
                 for frame1, frame2 in _consecutive(images) if frame1.stem.endswith("_10")]
        return _found(pairs, images, self.layout)


class FlyingChairs(FlowDataset):
    """FlyingChairs: ``data/NNNNN_img1.ppm, NNNNN_img2.ppm, NNNNN_flow.flo``.

    ``split``: ``"train"`` or ``"validation"`` (the samples marked 1 or 2, in order, in
    ``split_file``, by default ``root/FlyingChairs_train_val.txt``), or ``"all"``. Sample names
    are ``NNNNN``.
    """

    layout = "data/NNNNN_img1.ppm, NNNNN_img2.ppm, NNNNN_flow.flo"
    SPLITS = {"train": 1, "validation": 2}

    def __init__(self, root: str | os.PathLike, split: str = "validation",
                 split_file: str | os.PathLike | None = None):
        if split != "all" and split not in self.SPLITS:
            raise InputError(f"split: {split!r} is not one of {', '.join(self.SPLITS)}, all")
        self.split = split
        self.split_file = Path(split_file) if split_file else Path(root) / "FlyingChairs_train_val.txt"
        super().__init__(root)

    def _find(self) -> list[Pair]:
        data = _folder(self.root / "data", self.layout)
        stems = sorted(name[: -len("_img1.ppm")] for name in os.listdir(data) if name.endswith("_img1.ppm"))
        pairs = [Pair(s, data / f"{s}_img1.ppm", data / f"{s}_img2.ppm", data / f"{s}_flow.flo") for s in stems]
        if self.split != "all" and pairs:
            marks = self._marks()
            if len(marks) != len(pairs):
                raise InputError(f"{self.split_file}: {len(marks)} entries, but {data} holds {len(pairs)} "
                                 "frame pairs")
            pairs = [p for p, mark in zip(pairs, marks) if mark == self.SPLITS[self.split]]
        return _found(pairs, data, self.layout)

    def _marks(self) -> list[int]:
        try:
            words = self.split_file.read_text().split()
        except OSError as e:
            raise InputError(f"{self.split_file}: cannot read the split file ({e.strerror})") from e
        if not all(w in ("1", "2") for w in words):
            raise InputError(f"{self.split_file}: expected one 1 (train) or 2 (validation) per line")
        return [int(w) for w in words]


class FlyingThings3D(FlowDataset):
    """FlyingThings3D: ``frames_PASSpass/SPLIT/{A,B,C}/NNNN/CAMERA/NNNN.png`` with ground truth
    ``optical_flow/SPLIT/{A,B,C}/NNNN/into_future/CAMERA/OpticalFlowIntoFuture_NNNN_{L,R}.pfm``.

    Frame ``t`` is paired with ``t + 1``. ``split``: ``"TEST"`` or ``"TRAIN"``; ``pass_name``:
    ``"clean"`` or ``"final"``; ``camera``: ``"left"`` or ``"right"``. Sample names are
    ``{A,B,C}/NNNN/CAMERA/NNNN``.
    """

    layout = ("frames_cleanpass|frames_finalpass/TRAIN|TEST/A|B|C/NNNN/left|right/NNNN.png, optical_flow/"
              "TRAIN|TEST/A|B|C/NNNN/into_future/left|right/OpticalFlowIntoFuture_NNNN_L|R.pfm")
    SPLITS, PASSES, CAMERAS = ("TRAIN", "TEST"), ("clean", "final"), {"left": "L", "right": "R"}

    def __init__(self, root: str | os.PathLike, split: str = "TEST", pass_name: str = "clean",
                 camera: str = "left"):
        for arg, value, allowed in (("split", split, self.SPLITS), ("pass_name", pass_name, self.PASSES),
                                    ("camera", camera, tuple(self.CAMERAS))):
            if value not in allowed:
                raise InputError(f"{arg}: {value!r} is not one of {', '.join(allowed)}")
        self.split, self.pass_name, self.camera = split, pass_name, camera
        super().__init__(root)

    def _find(self) -> list[Pair]:
        frames = _folder(self.root / f"frames_{self.pass_name}pass" / self.split, self.layout)
        flows = _folder(self.root / "optical_flow" / self.split, self.layout)
        side = self.CAMERAS[self.camera]
        pairs = []
        for letter in _subfolders(frames):
            for sequence in _subfolders(letter):
                if not (sequence / self.camera).is_dir():
                    continue
                flow_dir = flows / letter.name / sequence.name / "into_future" / self.camera
                for frame1, frame2 in _consecutive(sequence / self.camera):
                    pairs.append(Pair(f"{letter.name}/{sequence.name}/{self.camera}/{frame1.stem}", frame1, frame2,
                                      flow_dir / f"OpticalFlowIntoFuture_{frame1.stem}_{side}.pfm"))
        return _found(pairs, frames, self.layout)


class HD1K(FlowDataset):
    """HD1K: ``hd1k_input/image_2/SSSSSS_FFFF.png`` (consecutive frames ``FFFF`` of sequence
    ``SSSSSS``) with ground truth ``hd1k_flow_gt/flow_occ/SSSSSS_FFFF.png`` (KITTI format).

    Sample names are ``SSSSSS_FFFF``.
    """

    layout = "hd1k_input/image_2/SSSSSS_FFFF.png, hd1k_flow_gt/flow_occ/SSSSSS_FFFF.png"
    sparse = True

    def _find(self) -> list[Pair]:
        images = _folder(self.root / "hd1k_input" / "image_2", self.layout)
        flows = _folder(self.root / "hd1k_flow_gt" / "flow_occ", self.layout)
        pairs = [Pair(frame1.stem, frame1, frame2, flows / frame1.name) for frame1, frame2 in _consecutive(images)]
        return _found(pairs, images, self.layout)


#: The readers by the name ``unroll eval --format`` takes.
FORMATS: dict[str, type[FlowDataset]] = {
    "middlebury": Middlebury,
    "sintel": Sintel,
    "kitti": KITTI,
    "chairs": FlyingChairs,
    "things": FlyingThings3D,
    "hd1k": HD1K,
}
