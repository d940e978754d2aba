"""Tests for the dataset readers, on tiny copies of each layout written here.

The ``write_*`` functions write a few 24 x 32 frame pairs in one layout and return what each
sample must read back, by sample name in the reader's order; ``tests/test_cli.py`` uses them too.
Frames are random bytes and flows random multiples of 1/64 px (exact in every format), seeded by
the file name, so a pair read from the wrong files cannot pass.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from unroll.data.datasets import (FORMATS, HD1K, KITTI, FlowDataset, FlyingChairs, FlyingThings3D,
                                  Middlebury, Sample, Sintel)
from unroll.errors import InputError
from unroll.flow_io import write_flo, write_kitti_flow
from unroll.images import write_image

SHAPE = (24, 32)


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode()))


def frame(key: str) -> np.ndarray:
    """The (h, w, 3) uint8 frame stored under ``key``."""
    return _rng(key).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)


def flow_field(key: str) -> np.ndarray:
    """The (h, w, 2) float32 flow stored under ``key``: multiples of 1/64 in [-4, 4]."""
    return (_rng(key).integers(-256, 257, (*SHAPE, 2)) / 64).astype(np.float32)


def mask(key: str, fraction: float = 0.5) -> np.ndarray:
    """A (h, w) bool mask, True with probability ``fraction``, stored under ``key``."""
    return _rng(key).random(SHAPE) < fraction


def _expect(name, frame1_key, frame2_key, flow, valid=None, **masks) -> tuple[str, dict]:
    valid = np.ones(SHAPE, bool) if valid is None else valid
    return name, dict(frame1=frame(frame1_key), frame2=frame(frame2_key), flow=flow, valid=valid, **masks)


def write_ppm(path: Path, image: np.ndarray) -> None:
    h, w, _ = image.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + image.astype(np.uint8).tobytes())


def write_pfm(path: Path, array: np.ndarray) -> None:
    """A colour ("PF") little-endian PFM; rows are stored bottom to top."""
    h, w, _ = array.shape
    path.write_bytes(b"PF\n%d %d\n-1.0\n" % (w, h) + np.flipud(array).astype("<f4").tobytes())


def _frames(folder: Path, names: list[str], writer=write_image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        writer(folder / name, frame(str(folder / name)))


def write_middlebury(root: Path) -> dict[str, dict]:
    expected = {}
    for sequence in ("Venus", "Dimetrodon"):
        folder = root / sequence
        _frames(folder, ["frame10.png", "frame11.png"])
        flow = flow_field(sequence)
        flow[0, 0] = 1.6666668e9  # unknown flow
        write_flo(folder / "flow10.flo", flow)
        valid = np.ones(SHAPE, bool)
        valid[0, 0] = False
        expected[sequence] = _expect(sequence, str(folder / "frame10.png"), str(folder / "frame11.png"), flow,
                                     valid)[1]
    return dict(sorted(expected.items()))


def write_sintel(root: Path, scenes=(("alley_1", 3), ("bamboo_2", 2)), occlusions=True) -> dict[str, dict]:
    """Both passes; the clean pass is what is returned."""
    training = root / "training"
    expected = {}
    for scene, n in scenes:
        names = [f"frame_{i:04d}.png" for i in range(1, n + 1)]
        for pass_name in ("clean", "final"):
            _frames(training / pass_name / scene, names)
        (training / "flow" / scene).mkdir(parents=True)
        if occlusions:
            (training / "occlusions" / scene).mkdir(parents=True)
        for first, second in zip(names, names[1:]):
            stem = first[:-4]
            flow = flow_field(f"{scene}/{stem}")
            write_flo(training / "flow" / scene / f"{stem}.flo", flow)
            occluded = mask(f"{scene}/{stem}/occ", 0.3)
            if occlusions:
                write_image(training / "occlusions" / scene / first, occluded)
            frame_dir = training / "clean" / scene
            expected.update([_expect(f"{scene}/{stem}", str(frame_dir / first), str(frame_dir / second), flow,
                                     occluded=occluded if occlusions else None)])
    return expected


def write_kitti(root: Path, n: int = 3, images: str = "image_2", noc: bool = True) -> dict[str, dict]:
    """KITTI 2015 (``images="image_2"``) or 2012 (``"colored_0"``); sparse, varying valid counts."""
    training = root / "training"
    for folder in (images, "flow_occ", "flow_noc"):
        (training / folder).mkdir(parents=True)
    expected = {}
    for i in range(n):
        stem = f"{i:06d}"
        _frames(training / images, [f"{stem}_10.png", f"{stem}_11.png"])
        flow, valid = flow_field(stem), mask(stem, 0.3 + 0.2 * i)
        noc_valid = valid & mask(f"{stem}/noc", 0.7)
        write_kitti_flow(training / "flow_occ" / f"{stem}_10.png", flow, valid)
        if noc:
            write_kitti_flow(training / "flow_noc" / f"{stem}_10.png", flow, noc_valid)
        expected.update([_expect(f"{stem}_10", str(training / images / f"{stem}_10.png"),
                                 str(training / images / f"{stem}_11.png"), flow, valid, noc_valid=noc_valid if noc else None)])
    return expected


def write_hd1k(root: Path, sequences=(3, 2)) -> dict[str, dict]:
    images, flows = root / "hd1k_input" / "image_2", root / "hd1k_flow_gt" / "flow_occ"
    flows.mkdir(parents=True)
    expected = {}
    for s, n in enumerate(sequences):
        names = [f"{s:06d}_{f:04d}.png" for f in range(n)]
        _frames(images, names)
        for f, name in enumerate(names):  # ground truth for every frame, the last one too
            flow, valid = flow_field(name), mask(name, 0.4)
            write_kitti_flow(flows / name, flow, valid)
            if f + 1 < n:
                expected.update([_expect(name[:-4], str(images / name), str(images / names[f + 1]),
                                         flow, valid)])
    return expected


def write_chairs(root: Path, marks=(1, 2, 1, 2, 2)) -> dict[str, dict]:
    """All samples; the ones marked 2 form the validation split."""
    data = root / "data"
    expected = {}
    for i in range(1, len(marks) + 1):
        stem = f"{i:05d}"
        _frames(data, [f"{stem}_img1.ppm", f"{stem}_img2.ppm"], write_ppm)
        flow = flow_field(stem)
        write_flo(data / f"{stem}_flow.flo", flow)
        expected.update([_expect(stem, str(data / f"{stem}_img1.ppm"), str(data / f"{stem}_img2.ppm"), flow)])
    (root / "FlyingChairs_train_val.txt").write_text("".join(f"{m}\n" for m in marks))
    return expected


def write_things(root: Path, split: str = "TEST", sequences=(("A", "0000", 3), ("B", "0001", 2))) -> dict[str, dict]:
    """Both passes, both cameras; the clean pass, left camera is what is returned."""
    expected = {}
    for letter, number, n in sequences:
        names = [f"{i:04d}.png" for i in range(6, 6 + n)]
        for pass_name in ("clean", "final"):
            for camera in ("left", "right"):
                _frames(root / f"frames_{pass_name}pass" / split / letter / number / camera, names)
        for camera, side in (("left", "L"), ("right", "R")):
            flow_dir = root / "optical_flow" / split / letter / number / "into_future" / camera
            flow_dir.mkdir(parents=True)
            for i, name in enumerate(names):
                flow = flow_field(f"{letter}{number}{camera}{name}")
                write_pfm(flow_dir / f"OpticalFlowIntoFuture_{name[:-4]}_{side}.pfm",
                          np.concatenate([flow, np.zeros((*SHAPE, 1), np.float32)], axis=2))
                if camera == "left" and i + 1 < n:
                    frames = root / "frames_cleanpass" / split / letter / number / "left"
                    expected.update([_expect(f"{letter}/{number}/left/{name[:-4]}", str(frames / name),
                                             str(frames / names[i + 1]), flow)])
    return expected


#: Per format: its writer and the reader options that read back what the writer returns.
WRITERS = {"middlebury": write_middlebury, "sintel": write_sintel, "kitti": write_kitti,
           "chairs": write_chairs, "things": write_things, "hd1k": write_hd1k}


def _assert_reads(dataset: FlowDataset, expected: dict[str, dict]) -> None:
    assert [p.name for p in dataset.pairs] == list(expected)
    assert len(dataset) == len(expected)
    for i, (name, fields) in enumerate(expected.items()):
        sample = dataset[i]
        assert isinstance(sample, Sample) and sample.name == name
        for key in Sample._fields[1:]:
            want, got = fields.get(key), getattr(sample, key)
            if want is None:
                assert got is None, key
                continue
            assert got.shape[:2] == SHAPE, key
            if key in ("valid", "occluded", "noc_valid"):
                assert got.dtype == bool and np.array_equal(got, want), key
            else:
                assert got.dtype == np.float32, key
                valid = fields["valid"]
                np.testing.assert_array_equal(got[valid], np.asarray(want, np.float32)[valid], err_msg=f"{name} {key}")


def test_registry():
    assert FORMATS == {"middlebury": Middlebury, "sintel": Sintel, "kitti": KITTI, "chairs": FlyingChairs,
                       "things": FlyingThings3D, "hd1k": HD1K}
    assert set(WRITERS) == set(FORMATS)
    assert [name for name, cls in FORMATS.items() if cls.sparse] == ["kitti", "hd1k"]


def test_middlebury(tmp_path):
    expected = write_middlebury(tmp_path)
    _assert_reads(Middlebury(tmp_path), expected)
    single = Middlebury(tmp_path / "Venus")
    assert [p.name for p in single.pairs] == ["Venus"]


@pytest.mark.parametrize("occlusions", [True, False])
def test_sintel(tmp_path, occlusions):
    expected = write_sintel(tmp_path, occlusions=occlusions)
    assert list(expected) == ["alley_1/frame_0001", "alley_1/frame_0002", "bamboo_2/frame_0001"]
    _assert_reads(Sintel(tmp_path), expected)
    final = Sintel(tmp_path, pass_name="final")
    assert final.pairs[1].frame1 == tmp_path / "training" / "final" / "alley_1" / "frame_0002.png"
    assert final.pairs[1].frame2 == tmp_path / "training" / "final" / "alley_1" / "frame_0003.png"
    np.testing.assert_array_equal(final[0].flow, expected["alley_1/frame_0001"]["flow"])
    with pytest.raises(InputError, match="'albedo'"):
        Sintel(tmp_path, pass_name="albedo")


@pytest.mark.parametrize("images", ["image_2", "colored_0"])
def test_kitti(tmp_path, images):
    expected = write_kitti(tmp_path, images=images)
    assert list(expected) == ["000000_10", "000001_10", "000002_10"]
    _assert_reads(KITTI(tmp_path), expected)


def test_kitti_without_noc(tmp_path):
    expected = write_kitti(tmp_path, n=1, noc=False)
    (tmp_path / "training" / "flow_noc").rmdir()
    _assert_reads(KITTI(tmp_path), expected)


def test_kitti_without_frames(tmp_path):
    (tmp_path / "training" / "flow_occ").mkdir(parents=True)
    with pytest.raises(InputError, match="image_2 nor colored_0") as info:
        KITTI(tmp_path)
    assert str(tmp_path / "training") in str(info.value)


def test_hd1k(tmp_path):
    expected = write_hd1k(tmp_path)
    assert list(expected) == ["000000_0000", "000000_0001", "000001_0000"]
    _assert_reads(HD1K(tmp_path), expected)


def test_chairs_splits(tmp_path):
    everything = write_chairs(tmp_path)
    marks = {"train": 1, "validation": 2}
    for split, mark in marks.items():
        subset = {name: fields for (name, fields), m in zip(everything.items(), (1, 2, 1, 2, 2)) if m == mark}
        _assert_reads(FlyingChairs(tmp_path, split=split), subset)
    assert [p.name for p in FlyingChairs(tmp_path).pairs] == ["00002", "00004", "00005"]  # validation
    _assert_reads(FlyingChairs(tmp_path, split="all"), everything)


def test_chairs_split_file_errors(tmp_path):
    write_chairs(tmp_path)
    split_file = tmp_path / "FlyingChairs_train_val.txt"
    split_file.write_text("1\n2\n")
    with pytest.raises(InputError, match="2 entries, but") as info:
        FlyingChairs(tmp_path)
    assert str(split_file) in str(info.value)
    split_file.unlink()
    with pytest.raises(InputError, match="cannot read the split file"):
        FlyingChairs(tmp_path, split="train")
    assert len(FlyingChairs(tmp_path, split="all")) == 5  # needs no split file
    other = tmp_path / "mine.txt"
    other.write_text("2\n2\n2\n2\n1\n")
    assert [p.name for p in FlyingChairs(tmp_path, split="train", split_file=other).pairs] == ["00005"]


def test_things(tmp_path):
    expected = write_things(tmp_path)
    assert list(expected) == ["A/0000/left/0006", "A/0000/left/0007", "B/0001/left/0006"]
    _assert_reads(FlyingThings3D(tmp_path), expected)
    right = FlyingThings3D(tmp_path, pass_name="final", camera="right")
    assert [p.name for p in right.pairs] == [n.replace("left", "right") for n in expected]
    assert right.pairs[0].frame1 == tmp_path / "frames_finalpass/TEST/A/0000/right/0006.png"
    assert right.pairs[0].flow == tmp_path / "optical_flow/TEST/A/0000/into_future/right/OpticalFlowIntoFuture_0006_R.pfm"
    np.testing.assert_array_equal(right[0].flow, flow_field("A0000right0006.png"))
    with pytest.raises(InputError, match="folder not found") as info:
        FlyingThings3D(tmp_path, split="TRAIN")
    assert str(tmp_path / "frames_cleanpass" / "TRAIN") in str(info.value)


@pytest.mark.parametrize("name", list(FORMATS))
def test_missing_folder_is_named(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as info:
        FORMATS[name](missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("name", list(FORMATS))
def test_no_pairs_names_folder(tmp_path, name):
    """Every folder of the layout present but no frames: the frame folder is named."""
    WRITERS[name](tmp_path)
    for path in tmp_path.rglob("*"):
        if path.suffix in (".png", ".ppm"):  # the frames (and KITTI's flow)
            path.unlink()
    with pytest.raises(InputError, match="no (frame pairs|sequence folders) found") as info:
        FORMATS[name](tmp_path)
    assert str(tmp_path) in str(info.value)


def test_files_are_read_when_indexed(tmp_path):
    expected = write_sintel(tmp_path)
    dataset = Sintel(tmp_path)
    flow_file = dataset.pairs[1].flow
    flow_file.unlink()  # listed at construction, read only now
    np.testing.assert_array_equal(dataset[0].flow, expected["alley_1/frame_0001"]["flow"])
    with pytest.raises(InputError, match=str(flow_file)):
        dataset[1]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_size_mismatch_names_file(tmp_path):
    write_sintel(tmp_path)
    dataset = Sintel(tmp_path)
    write_flo(dataset.pairs[0].flow, np.zeros((SHAPE[0], SHAPE[1] - 1, 2), np.float32))
    with pytest.raises(InputError, match="differs from") as info:
        dataset[0]
    assert str(dataset.pairs[0].flow) in str(info.value)
