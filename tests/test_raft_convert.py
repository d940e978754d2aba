"""Import of PyTorch RAFT weights: every tensor mapped, clear errors, and (where torch and
torchvision are installed) the same flow as torchvision's RAFT with the same random weights."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from learned.raft.convert import BATCH_NORM_EPS, convert, read_state_dict
from unroll.cli import main
from unroll.errors import InputError
from unroll.flow_io import read_flow
from unroll.images import write_image
from unroll.methods import build, preset

#: Names and shapes of the tensors in torchvision's raft_large / raft_small and princeton-vl/RAFT's
#: state dicts (written by torch from those implementations; names are the reference here).
KEYS = json.loads((Path(__file__).parent / "data" / "raft_state_dict_keys.json").read_text())


def _random_state_dict(layout: str, model: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in KEYS[layout][model].items():
        if name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif name.endswith("num_batches_tracked"):
            state[name] = np.array(7, np.int64)
        else:
            state[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    for name in state:  # princeton-vl/RAFT registers each downsample norm twice: same tensors
        twin = re.sub(r"\.norm[34]\.", ".downsample.1.", name)
        if twin != name and twin in state:
            state[name] = state[twin]
    return state


def _params(model: str) -> nnx.State:
    return nnx.state(build(preset(model)), nnx.Param)


@pytest.mark.parametrize("layout", ["torchvision", "original"])
@pytest.mark.parametrize("model", ["raft", "raft-small"])
def test_every_tensor_is_mapped(layout, model):
    state = _random_state_dict(layout, model)
    params = convert(state, _params(model))
    leaves = {np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(params)}
    kernels = [v for v in state.values() if v.ndim == 4]
    assert all(k.transpose(2, 3, 1, 0).tobytes() in leaves for k in kernels)  # OIHW -> HWIO, each used


def test_batch_norm_statistics_are_folded_into_scale_and_bias():
    state = _random_state_dict("torchvision", "raft")
    params = nnx.to_pure_dict(convert(state, _params("raft")))
    norm = params["solver"]["step"]["context_encoder"]["stem_norm"]
    prefix = "context_encoder.convnormrelu.1."
    scale = state[prefix + "weight"] / np.sqrt(state[prefix + "running_var"] + BATCH_NORM_EPS)
    np.testing.assert_allclose(norm["scale"], scale, rtol=1e-6)
    np.testing.assert_allclose(norm["bias"], state[prefix + "bias"] - state[prefix + "running_mean"] * scale,
                               rtol=1e-5, atol=1e-7)


def test_data_parallel_prefix_is_optional():
    state = _random_state_dict("original", "raft-small")
    assert all(k.startswith("module.") for k in state)  # as the published .pth files
    with_prefix = nnx.to_pure_dict(convert(state, _params("raft-small")))
    without = nnx.to_pure_dict(convert({k.removeprefix("module."): v for k, v in state.items()}, _params("raft-small")))
    jax.tree.map(np.testing.assert_array_equal, with_prefix, without)


def test_missing_left_over_and_misshapen_tensors_are_named():
    state = _random_state_dict("torchvision", "raft-small")
    del state["update_block.flow_head.conv2.bias"]
    state["update_block.extra.weight"] = np.zeros(3, np.float32)
    state["feature_encoder.conv.weight"] = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(InputError) as error:
        convert(state, _params("raft-small"))
    message = str(error.value)
    assert "missing update_block.flow_head.conv2.bias" in message
    assert "left over: update_block.extra.weight" in message
    assert "encoder/head/kernel" in message and "(3, 4, 2, 1)" in message


def test_weights_of_the_other_model_do_not_fit():
    with pytest.raises(InputError, match="missing"):
        convert(_random_state_dict("torchvision", "raft-small"), _params("raft"))


def test_not_a_raft_state_dict():
    with pytest.raises(InputError, match="not a RAFT state dict"):
        convert({"conv.weight": np.zeros((1, 1, 1, 1))}, _params("raft-small"))


def test_corrupt_file_is_an_input_error(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pth"):
        read_state_dict(path)


def _smooth_pair(shape, seed=0):
    """Two 8-bit colour frames ``(h, w, 3)``, the second moved by (2, 1) px."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.uniform(0, 255, (shape[0] + 8, shape[1] + 8, 3)), (2, 2, 0))
    base = np.round((base - base.min()) / (base.max() - base.min()) * 255).astype(np.float32)
    return base[4:-4, 4:-4], base[3:-5, 2:-6]


@pytest.mark.parametrize("model, factory", [("raft", "raft_large"), ("raft-small", "raft_small")])
def test_flow_equals_torchvision_raft_with_the_same_weights(model, factory, tmp_path):
    torch = pytest.importorskip("torch")
    optical_flow = pytest.importorskip("torchvision.models.optical_flow")
    torch.manual_seed(0)
    reference = getattr(optical_flow, factory)(weights=None)
    for name, buffer in reference.named_buffers():  # non-trivial batch-norm statistics
        if name.endswith("running_mean"):
            buffer.uniform_(-0.2, 0.2)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    reference.eval()
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    workdir = tmp_path / "converted"
    assert main(["convert", model, str(path), str(workdir)]) == 0

    frame1, frame2 = _smooth_pair((128, 160))
    to_torch = lambda f: torch.from_numpy(f.transpose(2, 0, 1)[None] / 127.5 - 1.0).float()
    with torch.no_grad():
        expected = reference(to_torch(frame1), to_torch(frame2), num_flow_updates=12)[-1][0].numpy().transpose(1, 2, 0)

    paths = [str(tmp_path / "f1.png"), str(tmp_path / "f2.png")]
    for path, frame in zip(paths, (frame1, frame2)):
        write_image(path, frame)
    out = tmp_path / "flow.flo"
    assert main(["flow", *paths, "--method", model, "--checkpoint", str(workdir), "--iters", "12", "-o", str(out)]) == 0
    flow, _ = read_flow(out)
    assert np.abs(expected).max() > 1.0  # a flow worth comparing
    np.testing.assert_allclose(flow, expected, atol=1e-3)


def test_reading_pth_without_torch_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'unroll\[torch\]'"):
        read_state_dict(tmp_path / "weights.pth")
