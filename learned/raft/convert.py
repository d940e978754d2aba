"""Import of PyTorch RAFT weights: the original ``princeton-vl/RAFT`` checkpoints and torchvision's
``raft_large`` / ``raft_small`` state dicts, into this project's parameters.

Every parameter of the model is looked up under its PyTorch name (none may be missing) and every
PyTorch tensor must be used (none may be left over); convolution kernels go from OIHW to HWIO,
and batch norms' running statistics are folded into ``FrozenBatchNorm``'s scale and bias.
torch is needed only to read ``.pth`` files (``read_state_dict``); the mapping works on NumPy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
from flax import nnx

from unroll.errors import InputError

#: torch's BatchNorm2d epsilon, folded into the scale.
BATCH_NORM_EPS = 1e-5

#: Where each part of ``Raft`` lives in either layout: (our module path, torchvision, original).
_PARTS = (
    (("solver", "energy", "data", "encoder"), "feature_encoder", "fnet"),
    (("solver", "step", "context_encoder"), "context_encoder", "cnet"),
    (("solver", "step", "update", "motion"), "update_block.motion_encoder", "update_block.encoder"),
    (("solver", "step", "update", "gru"), "update_block.recurrent_block", "update_block.gru"),
    (("solver", "step", "update", "flow_head"), "update_block.flow_head", "update_block.flow_head"),
    (("solver", "step", "mask"), "mask_predictor", "update_block.mask"),
)

_GATES = {"update_gate": "z", "reset_gate": "r", "candidate": "q"}


def _torchvision_name(part: str, path: tuple) -> str:
    """torchvision's module name of our module ``path`` (relative to its part)."""
    name = ".".join(map(str, path))
    if part in ("feature_encoder", "context_encoder"):
        name = {"stem_conv": "convnormrelu.0", "stem_norm": "convnormrelu.1", "head": "conv"}.get(name, name)
        name = re.sub(r"conv(\d)$", r"convnormrelu\1.0", name)
        name = re.sub(r"norm(\d)$", r"convnormrelu\1.1", name)
        return name.replace("downsample.conv", "downsample.0").replace("downsample.norm", "downsample.1")
    if part.endswith("motion_encoder"):
        name = re.sub(r"corr_convs\.(\d)", lambda m: f"convcorr{int(m[1]) + 1}.0", name)
        name = re.sub(r"flow_convs\.(\d)", lambda m: f"convflow{int(m[1]) + 1}.0", name)
        return name.replace("out_conv", "conv.0")
    if part.endswith("recurrent_block"):
        gru = "convgru2" if path[0] == "vertical" else "convgru1"
        return f"{gru}.conv{_GATES[path[-1]]}"
    if part == "mask_predictor":
        return {"conv1": "convrelu.0", "conv2": "conv"}[name]
    return name


def _original_name(part: str, path: tuple) -> str:
    """princeton-vl/RAFT's module name of our module ``path`` (relative to its part)."""
    name = ".".join(map(str, path))
    if part in ("fnet", "cnet"):
        name = {"stem_conv": "conv1", "stem_norm": "norm1", "head": "conv2"}.get(name, name)
        return name.replace("downsample.conv", "downsample.0").replace("downsample.norm", "downsample.1")
    if part == "update_block.encoder":
        name = re.sub(r"corr_convs\.(\d)", lambda m: f"convc{int(m[1]) + 1}", name)
        name = re.sub(r"flow_convs\.(\d)", lambda m: f"convf{int(m[1]) + 1}", name)
        return name.replace("out_conv", "conv")
    if part == "update_block.gru":
        index = {"horizontal": "1", "vertical": "2"}.get(path[0], "")
        return f"conv{_GATES[path[-1]]}{index}"
    if part == "update_block.mask":
        return {"conv1": "0", "conv2": "2"}[name]
    return name


def layout(state_dict: Mapping[str, np.ndarray]) -> str:
    """``torchvision`` or ``original`` (princeton-vl/RAFT), from the key names."""
    if any(k.startswith("feature_encoder.") for k in state_dict):
        return "torchvision"
    if any(k.startswith("fnet.") for k in state_dict):
        return "original"
    raise InputError("not a RAFT state dict: no feature_encoder.* (torchvision) or fnet.* (princeton-vl/RAFT) keys")


def strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop ``nn.DataParallel``'s ``module.`` prefix where present."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def convert(state_dict: Mapping[str, np.ndarray], params: nnx.State) -> nnx.State:
    """``params`` (the ``nnx.Param`` state of a ``Raft`` of the same variant, arrays or shapes) with every leaf taken
    from the PyTorch ``state_dict`` (name -> array); raises ``InputError`` naming every missing,
    left-over or misshapen tensor."""
    state_dict = strip_prefix(state_dict)
    naming = {"torchvision": (0, _torchvision_name), "original": (1, _original_name)}[layout(state_dict)]
    target = nnx.to_pure_dict(params)
    flat = {path: leaf for path, leaf in _flatten(target)}
    modules = sorted({path[:-1] for path in flat}, key=str)
    used, problems, values = set(), [], {}
    for module in modules:
        prefix = _torch_prefix(module, naming)
        if module + ("scale",) in flat:  # a batch norm: fold its statistics
            names = [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
            missing = [n for n in names if n not in state_dict]
            if missing:
                problems += [f"missing {n}" for n in missing]
                continue
            weight, bias, mean, var = (np.asarray(state_dict[n], np.float32) for n in names)
            scale = weight / np.sqrt(var + BATCH_NORM_EPS)
            values[module + ("scale",)], values[module + ("bias",)] = scale, bias - mean * scale
            used.update(names + [f"{prefix}.num_batches_tracked"])
            continue
        for ours, theirs in (("kernel", "weight"), ("bias", "bias")):
            name = f"{prefix}.{theirs}"
            if name not in state_dict:
                problems.append(f"missing {name}")
                continue
            array = np.asarray(state_dict[name], np.float32)
            values[module + (ours,)] = array.transpose(2, 3, 1, 0) if ours == "kernel" else array
            used.add(name)
    for path, array in values.items():
        if array.shape != flat[path].shape:
            problems.append(f"{'/'.join(map(str, path))} needs shape {flat[path].shape}, got {array.shape}")
    leftover = sorted(set(state_dict) - used - _aliases(state_dict, used))
    problems += [f"left over: {name}" for name in leftover]
    if problems:
        raise InputError("the state dict does not fit this RAFT: " + "; ".join(problems))
    nnx.replace_by_pure_dict(params, _unflatten(target, values))
    return params


def _torch_prefix(module: tuple, naming) -> str:
    """The PyTorch name of our module path, under ``naming`` = (the layout's column of ``_PARTS``
    after ours, its renaming function)."""
    column, rename = naming
    for ours, *theirs in _PARTS:
        if module[:len(ours)] == ours:
            part = theirs[column]
            return f"{part}.{rename(part, module[len(ours):])}"
    raise ValueError(f"no PyTorch name for {module}")


def _aliases(state_dict: Mapping[str, np.ndarray], used: set[str]) -> set[str]:
    """princeton-vl/RAFT registers a block's downsample norm twice (``norm3``/``norm4`` and
    ``downsample.1``); the duplicates are consumed when equal to the used tensor."""
    aliases = set()
    for name in state_dict:
        match = re.match(r"(.*)\.norm([34])\.(\w+)$", name)
        if match and f"{match[1]}.downsample.1.{match[3]}" in used:
            twin = state_dict[f"{match[1]}.downsample.1.{match[3]}"]
            if np.array_equal(np.asarray(state_dict[name]), np.asarray(twin)):
                aliases.add(name)
    return aliases


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _flatten(value, prefix + (key,))
    else:
        yield prefix, tree


def _unflatten(target, values: dict, prefix=()):
    if isinstance(target, Mapping):
        return {key: _unflatten(value, values, prefix + (key,)) for key, value in target.items()}
    return values[prefix]


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint file as NumPy arrays (needs torch: ``pip install
    'unroll[torch]'``); accepts a bare state dict or one under a ``state_dict`` / ``model`` key."""
    try:
        import torch
    except ImportError:
        raise InputError("reading .pth files needs PyTorch: pip install 'unroll[torch]'") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(hasattr(v, "numpy") for v in loaded.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy() for k, v in loaded.items()}
