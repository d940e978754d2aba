"""Tests for the ``unroll`` command line, run in-process through ``main`` on small synthetic frames.

The frames are a smooth random texture and the same texture shifted by a known sub-pixel
translation, so the right flow is known. A cheap configuration (two pyramid levels, 20
iterations) keeps each compile to seconds; the persistent compile cache, pointed at a private
directory, makes the repeated compiles of the same configuration and size nearly free.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache
from scipy import ndimage

from unroll import compile_cache
from unroll.cli import DESCRIPTIONS, main
from unroll.evaluation import POOLED, SPLIT_COLUMNS
from unroll.data.datasets import find_sequences
from unroll.config import override
from unroll.data.datasets import FORMATS
from unroll.errors import InputError
from unroll.estimator import FlowEstimator
from unroll.flow_io import read_flow, write_flow
from unroll.images import read_image, write_image
from unroll.methods import METHODS, PRESETS, preset
from unroll.metrics import flow_metrics

from test_datasets import WRITERS

REPO_ROOT = Path(__file__).resolve().parent.parent
SHAPE = (40, 56)
FAST = ["--set", "pyramid.levels=2", "--set", "solver.num_iters=20"]
#: Flow (u, v) of the synthetic pairs: pixel (x, y) of frame 1 is at (x + u, y + v) in frame 2.
SHIFTS = {"alpha": (-0.7, -0.4), "beta": (0.5, 0.3)}
_CACHE_FLAGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                "jax_persistent_cache_min_entry_size_bytes")


def _texture(seed: int = 0) -> np.ndarray:
    """Smooth random texture, 0..255, larger than ``SHAPE`` by a margin of 16 on each side."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.uniform(0, 255, (SHAPE[0] + 32, SHAPE[1] + 32)), 2.0)
    return (base - base.min()) / (base.max() - base.min()) * 255


def _write_pair(folder, flow: tuple[float, float], names=("frame10.png", "frame11.png")) -> list[str]:
    """Writes a frame and the same frame moved by the constant ``flow`` (u, v); returns the paths."""
    base = _texture()
    u, v = flow
    moved = ndimage.shift(base, (v, u), order=3, mode="nearest")  # frame2(x) = frame1(x - flow)
    crop = (slice(16, 16 + SHAPE[0]), slice(16, 16 + SHAPE[1]))
    paths = [str(folder / name) for name in names]
    write_image(paths[0], base[crop])
    write_image(paths[1], moved[crop])
    return paths


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """A private compile cache for this module's CLI runs; JAX's cache settings are restored after."""
    path = tmp_path_factory.mktemp("jax-cache")
    saved = {flag: getattr(jax.config, flag) for flag in _CACHE_FLAGS}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNROLL_CACHE_DIR", str(path))
        yield path
    for flag, value in saved.items():
        jax.config.update(flag, value)
    jax_cache.reset_cache()


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[str]:
    """Paths of two PNG frames related by the flow ``SHIFTS["alpha"]``."""
    return _write_pair(tmp_path_factory.mktemp("frames"), SHIFTS["alpha"], ("a.png", "b.png"))


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """A folder of two Middlebury-layout sequences, ``alpha`` and ``beta``, with ground truth."""
    root = tmp_path_factory.mktemp("data")
    for name, flow in SHIFTS.items():
        (root / name).mkdir()
        _write_pair(root / name, flow)
        write_flow(root / name / "flow10.flo", np.broadcast_to(np.float32(flow), (*SHAPE, 2)))
    return root


def _assert_error(capsys, code: int, *needles: str) -> str:
    """Checks for exit status 2 and one ``unroll: error:`` line containing every needle."""
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("unroll: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err
    return err


def test_flow_writes_flo_and_picture(frames, tmp_path, capsys):
    out, picture = tmp_path / "out.flo", tmp_path / "out.png"
    assert main(["flow", *frames, "-o", str(out), "--viz", str(picture), *FAST]) == 0

    flow, _ = read_flow(out)
    assert flow.shape == (*SHAPE, 2)
    interior = flow[6:-6, 6:-6] - np.float32(SHIFTS["alpha"])
    assert np.abs(interior).mean() < 0.05 and np.abs(interior).max() < 0.3
    assert iio.imread(picture).shape == (*SHAPE, 3)
    err = capsys.readouterr().err
    assert "tv-l1: compiled in " in err and ", flow in " in err and str(out) in err


def test_flow_writes_kitti_png(frames, tmp_path):
    out = tmp_path / "out.png"
    assert main(["flow", *frames, "-o", str(out), *FAST]) == 0

    flow, valid = read_flow(out)
    assert flow.shape == (*SHAPE, 2) and valid.all()
    assert np.abs(flow[6:-6, 6:-6] - np.float32(SHIFTS["alpha"])).mean() < 0.05


def test_eval_matches_independent_metrics(sequences, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["eval", "--data", str(sequences), "--json", str(out), *FAST]) == 0

    results = json.loads(out.read_text())
    keys = {"epe", "aae", "px1", "px3", "px5", "fl_all", "time_s"}
    assert list(results["sequences"]) == ["alpha", "beta"]
    assert all(set(row) == keys for row in results["sequences"].values())
    assert set(results["mean"]) == keys
    for key in keys:
        assert results["mean"][key] == pytest.approx(np.mean([r[key] for r in results["sequences"].values()]))

    est = FlowEstimator(override(preset("tv-l1"), FAST[1::2]))
    for name in SHIFTS:
        folder = sequences / name
        flow = est(read_image(folder / "frame10.png"), read_image(folder / "frame11.png"))
        expected = flow_metrics(flow, *read_flow(folder / "flow10.flo"))
        assert results["sequences"][name]["epe"] == pytest.approx(expected["epe"], abs=1e-5)
        assert results["sequences"][name]["px1"] == pytest.approx(expected["px1"], abs=1e-5)
        assert expected["epe"] < 0.1

    table = capsys.readouterr().out
    assert "alpha" in table and "beta" in table and "mean" in table and "EPE" in table


def test_find_sequences(sequences, tmp_path, capsys):
    assert find_sequences(sequences) == [sequences / "alpha", sequences / "beta"]
    assert find_sequences(sequences / "beta") == [sequences / "beta"]
    _assert_error(capsys, main(["eval", "--data", str(tmp_path)]), str(tmp_path), "no sequence folders")
    _assert_error(capsys, main(["eval", "--data", str(tmp_path / "none")]), str(tmp_path / "none"))


def test_set_unknown_key_lists_valid_keys(frames, tmp_path, capsys):
    out = str(tmp_path / "o.flo")
    _assert_error(capsys, main(["flow", *frames, "-o", out, "--set", "smoothnes.alpha=3"]),
                  "smoothnes.alpha", "smoothness.alpha", "solver.num_iters")
    _assert_error(capsys, main(["flow", *frames, "-o", out, "--set", "smoothness.alpah=3"]),
                  "smoothness.alpah", "alpha")


def test_set_bad_value_names_key(capsys):
    _assert_error(capsys, main(["config", "--set", "solver.num_iters=abc"]), "solver.num_iters", "abc")


def test_missing_file(frames, tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    _assert_error(capsys, main(["flow", frames[0], missing, "-o", str(tmp_path / "o.flo")]), missing)


def test_frames_of_different_sizes(frames, tmp_path, capsys):
    small = str(tmp_path / "small.png")
    write_image(small, np.zeros((SHAPE[0], SHAPE[1] - 8)))
    out = tmp_path / "o.flo"
    code = main(["flow", frames[0], small, "-o", str(out)])
    _assert_error(capsys, code, frames[0], small, "(40, 56, 1)", "(40, 48, 1)")
    assert not out.exists()


def test_frames_too_small(tmp_path, capsys):
    tiny = str(tmp_path / "tiny.png")
    write_image(tiny, np.zeros((3, 3)))
    _assert_error(capsys, main(["flow", tiny, tiny, "-o", str(tmp_path / "o.flo")]), tiny, "3x3", "too small")


def test_unknown_method_lists_methods(frames, tmp_path, capsys):
    code = main(["flow", *frames, "--method", "nope", "-o", str(tmp_path / "o.flo")])
    _assert_error(capsys, code, "'nope'", *METHODS)


def test_unknown_output_extension(frames, tmp_path, capsys):
    out = tmp_path / "o.txt"
    _assert_error(capsys, main(["flow", *frames, "-o", str(out)]), str(out), ".flo")
    assert not out.exists()


def test_nan_frame_is_an_input_error():
    frame = np.full((*SHAPE, 1), 100.0, np.float32)
    bad = frame.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        FlowEstimator(preset("tv-l1"))(bad, frame)


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["flow"])
    assert exit_info.value.code == 2
    assert "usage: unroll flow" in capsys.readouterr().err


def test_models_lists_methods_and_networks_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    expected = [[name, "0"] for name in PRESETS] + [
        ["raft", "5257536"], ["raft-small", "990162"], ["flownet-s", "38675536"], ["flownet-c", "39174320"],
        ["pwc-net", "9374274"], ["gmflow", "4680288"], ["gmflow-refine", "4716720"], ["flowformer", "9242224"]]
    assert [line.split()[:2] for line in lines] == expected


def test_every_method_has_a_description():
    assert set(DESCRIPTIONS) == set(METHODS)
    assert all(text and "\n" not in text for text in DESCRIPTIONS.values())


def test_config_prints_json(capsys):
    assert main(["config", "--method", "tv-l1", "--set", "smoothness.alpha=3"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["smoothness"]["alpha"] == 3.0
    assert config["solver"]["num_iters"] == PRESETS["tv-l1"].solver.num_iters


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path / "u"))
    assert compile_cache.default_dir() == tmp_path / "u"
    monkeypatch.delenv("UNROLL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert compile_cache.default_dir() == tmp_path / "x" / "unroll" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert compile_cache.default_dir() == tmp_path / "h" / ".cache" / "unroll" / "jax"


# A configuration that compiles in about a second, for the tests that need a fresh compile.
_CHEAP = ["--method", "lucas-kanade", "--set", "pyramid.levels=1", "--set", "pyramid.warps=1"]


def test_no_cache_flag_after_command(frames, tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["flow", *frames, "-o", str(tmp_path / "o.flo"), "--no-cache", *_CHEAP]) == 0
    assert not (tmp_path / "cache").exists()


def test_compile_cache_persists_across_processes(frames, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "unroll.cli", "flow", *frames, "-o", str(tmp_path / "o.flo"), *_CHEAP]
    env = {**os.environ, "UNROLL_CACHE_DIR": str(cache)}

    first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    entries = sorted(os.listdir(cache))
    assert entries

    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert sorted(os.listdir(cache)) == entries  # loaded from the cache, nothing compiled anew


# --------------------------------------------------------------------------- #
# unroll eval --format: the tiny data sets of tests/test_datasets.py
# --------------------------------------------------------------------------- #

TINY = ["--set", "pyramid.levels=1", "--set", "solver.num_iters=2"]
_BASE_KEYS = {"epe", "aae", "px1", "px3", "px5", "fl_all", "time_s"}


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Per format: the folder of a tiny data set and what its samples hold, by sample name."""
    root = tmp_path_factory.mktemp("formats")
    written = {}
    for name, writer in WRITERS.items():
        (root / name).mkdir()
        written[name] = (root / name, writer(root / name))
    return written


@pytest.fixture(scope="module")
def tiny_estimator() -> FlowEstimator:
    return FlowEstimator(override(preset("tv-l1"), TINY[1::2]))


def _evaluated(fmt: str, expected: dict) -> dict:
    """The samples ``unroll eval --format fmt`` reads by default: Chairs' validation split."""
    if fmt == "chairs":
        return {name: s for name, s in expected.items() if name in ("00002", "00004", "00005")}
    return expected


def _weights(fmt: str, key: str, sample: dict) -> int:
    """How many pixels ``key`` of ``sample`` is measured on, as the benchmark pools them."""
    valid = sample["valid"]
    if key == "epe_occ":
        return np.count_nonzero(valid & sample["occluded"] if fmt == "sintel" else valid & ~sample["noc_valid"])
    if key == "epe_noc":
        return np.count_nonzero(valid & ~sample["occluded"] if fmt == "sintel" else sample["noc_valid"])
    return np.count_nonzero(valid)


def test_pooled_covers_every_format():
    assert set(POOLED) == set(FORMATS) | {"synthetic"}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_eval_format(fmt, formats, tiny_estimator, tmp_path, capsys):
    root, written = formats[fmt]
    expected = _evaluated(fmt, written)
    out = tmp_path / "results.json"
    args = ["eval", "--data", str(root), "--json", str(out), *TINY]
    assert main(args if fmt == "middlebury" else [*args, "--format", fmt]) == 0

    results = json.loads(out.read_text())
    rows = results["sequences"]
    assert list(rows) == list(expected) and results["format"] == fmt
    keys = _BASE_KEYS | (set(SPLIT_COLUMNS) if fmt in ("sintel", "kitti") else set())
    assert all(set(row) == keys for row in rows.values()) and set(results["mean"]) == keys
    for key in keys:
        values = [row[key] for row in rows.values()]
        if key in POOLED[fmt]:
            weights = [_weights(fmt, key, s) for s in expected.values()]
            assert results["mean"][key] == pytest.approx(np.dot(values, weights) / np.sum(weights))
        else:
            assert results["mean"][key] == pytest.approx(np.mean(values))

    for name, sample in expected.items():  # the right frames, ground truth and masks were used
        flow = tiny_estimator(sample["frame1"].astype(np.float32), sample["frame2"].astype(np.float32))
        metrics = flow_metrics(flow, sample["flow"], sample["valid"])
        for key in ("epe", "fl_all"):
            assert rows[name][key] == pytest.approx(metrics[key], abs=1e-4)
        if fmt in ("sintel", "kitti"):
            occluded = sample["occluded"] if fmt == "sintel" else ~sample["noc_valid"]
            assert rows[name]["epe_occ"] == pytest.approx(
                flow_metrics(flow, sample["flow"], sample["valid"] & occluded)["epe"], abs=1e-4)
            assert rows[name]["epe_noc"] == pytest.approx(
                flow_metrics(flow, sample["flow"], sample["valid"] & ~occluded)["epe"], abs=1e-4)

    if fmt == "kitti":  # its images differ in their number of valid pixels: pooling is not averaging
        assert results["mean"]["fl_all"] != pytest.approx(np.mean([row["fl_all"] for row in rows.values()]))
    table = capsys.readouterr().out
    assert ("EPE noc" in table) == (fmt in ("sintel", "kitti")) and "mean" in table


def test_eval_limit(formats, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["eval", "--data", str(formats["sintel"][0]), "--format", "sintel", "--limit", "2",
                 "--json", str(out), *TINY]) == 0
    assert list(json.loads(out.read_text())["sequences"]) == ["alley_1/frame_0001", "alley_1/frame_0002"]
    assert "2 pairs in" in capsys.readouterr().err


def test_eval_format_errors(formats, tmp_path, capsys):
    _assert_error(capsys, main(["eval", "--data", str(tmp_path), "--format", "sintel"]),
                  str(tmp_path / "training" / "clean"), "folder not found")
    for bad in (["--format", "vkitti"], ["--limit", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "--data", str(tmp_path), *bad])
        assert exit_info.value.code == 2
        assert bad[1] in capsys.readouterr().err


def test_eval_sample_without_occlusions(formats, tmp_path, capsys):
    """EPE occ of a pair with no occluded pixel is null in the JSON, "-" in the table, left out of the mean."""
    root = tmp_path / "sintel"
    shutil.copytree(formats["sintel"][0], root)
    write_image(root / "training" / "occlusions" / "alley_1" / "frame_0001.png", np.zeros((24, 32), np.uint8))
    out = tmp_path / "results.json"
    assert main(["eval", "--data", str(root), "--format", "sintel", "--json", str(out), *TINY]) == 0
    results = json.loads(out.read_text())
    rows = results["sequences"]
    assert rows["alley_1/frame_0001"]["epe_occ"] is None
    assert rows["alley_1/frame_0001"]["epe_noc"] == pytest.approx(rows["alley_1/frame_0001"]["epe"])
    others = [name for name in rows if name != "alley_1/frame_0001"]
    assert min(rows[name]["epe_occ"] for name in others) <= results["mean"]["epe_occ"]
    assert results["mean"]["epe_occ"] <= max(rows[name]["epe_occ"] for name in others)
    first_row = capsys.readouterr().out.splitlines()[1]
    assert first_row.startswith("alley_1/frame_0001") and " - " in first_row
