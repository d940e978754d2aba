"""Mixed precision (``method.compute_dtype``, ``unroll.precision``): bfloat16 layers, float32 the rest.

bfloat16 keeps 8 significant bits (a relative rounding of 2**-9 per operation), so after a few
dozen layers a flow differs from the float32 one by about a percent of its size; a flow or its
sampling coordinates rounded to bfloat16 would err by up to 0.25 px at 64 px (and far more in
the end-point error of a whole trajectory), and fail the bounds below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from learned.local_correlation import local_correlation
from learned.raft.correlation import BACKENDS
from unroll.cli import main
from unroll.config import ConfigError, flat_keys, override, to_dict
from unroll.estimator import FlowEstimator
from unroll.experiment import experiment
from unroll.methods import build, preset
from unroll.precision import network_layers
from unroll.training import OptimConfig, make_train_step, network_weights

from test_raft import _frames

#: Small enough to compile in seconds: 2 correlation levels allow 32 x 48 frames (4 x 6 at 1/8).
RAFT_SMALL = ["solver.num_iters=3", "model.corr_levels=2"]
#: A Horn-Schunck-like hybrid with every network-bearing operator learned.
HYBRID = ["pyramid.levels=2", "pyramid.warps=1", "pyramid.median_size=0", "solver.num_iters=3",
          "step.learned=gru", "data.learned_channels=4", "smoothness.learned=true"]


def _estimator(name: str, sets: list[str], dtype: str, params=None) -> FlowEstimator:
    est = FlowEstimator(override(preset(name), sets + [f"compute_dtype={dtype}"]))
    if params is not None:
        est.load(params)
    return est


def _perturbed(name: str, sets: list[str]) -> nnx.State:
    """The method's parameters, its networks' weights plus noise: the hybrid's networks start at
    zero (the hand-tuned method), where bfloat16 would change nothing."""
    params = nnx.state(build(override(preset(name), sets)), nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    noise = lambda p, weight: 0.03 * jax.random.normal(next(keys), p.shape, p.dtype) if weight else 0.0
    return jax.tree.map(lambda p, weight: p + noise(p, weight), params, network_weights(params))


@pytest.mark.parametrize("name, sets, params", [("raft-small", RAFT_SMALL, None), ("tv-l1", HYBRID, "perturbed")])
def test_bfloat16_flow_is_close_to_float32(name, sets, params):
    params = _perturbed(name, sets) if params else None
    frame1, frame2 = _frames((32, 48))
    flows = {dtype: _estimator(name, sets, dtype, params)(frame1, frame2) for dtype in ("float32", "bfloat16")}
    assert flows["bfloat16"].dtype == np.float32
    error = np.linalg.norm(flows["bfloat16"] - flows["float32"], axis=-1)
    size = np.linalg.norm(flows["float32"], axis=-1).mean()
    assert 0 < error.mean() < 0.02 * size and error.max() < 0.1 * size, (error.mean(), error.max(), size)


def test_network_layers_compute_in_bfloat16_and_correlate_in_float32():
    model = build(override(preset("raft-small"), RAFT_SMALL + ["compute_dtype=bfloat16"]))
    assert network_layers(model) and all(layer.dtype == jnp.bfloat16 for layer in network_layers(model))
    frame1, frame2 = _frames((32, 48))
    data = model.solver.energy.data
    features = [data.features(jnp.asarray(f) / 127.5 - 1) for f in (frame1, frame2)]
    assert features[0].dtype == jnp.bfloat16
    pyramid = data.correlation.build(*features)
    assert data.lookup(pyramid, jnp.zeros(features[0].shape[:2] + (2,))).dtype == jnp.float32
    for backend in BACKENDS.values():
        corr = backend(levels=2, radius=1)
        assert corr.lookup(corr.build(*features), jnp.zeros((4, 6, 2))).dtype == jnp.float32
    assert local_correlation(*features, max_displacement=2).dtype == jnp.float32


def test_a_bfloat16_train_step_keeps_float32_state_and_reaches_every_parameter():
    config = override(preset("raft-small"), RAFT_SMALL + ["compute_dtype=bfloat16"])
    # no weight decay: with Adam a parameter moves exactly where its gradient is not zero
    step, params, opt_state = make_train_step(build(config, keep_trajectory=True),
                                              OptimConfig(steps=2, weight_decay=0.0, schedule="constant"))
    frame1, frame2 = _frames((32, 48))
    batch = {"frame1": jnp.asarray([frame1, frame2]), "frame2": jnp.asarray([frame2, frame1]),
             "flow": jnp.asarray(np.broadcast_to([[[[1.0, 2.0]]], [[[-1.0, -2.0]]]], (2, 32, 48, 2)), jnp.float32),
             "valid": jnp.ones((2, 32, 48), bool)}
    new_params, opt_state, measured = step(params, opt_state, batch)
    assert all(np.isfinite(float(v)) for v in measured.values()), measured
    floats = [leaf for leaf in jax.tree.leaves((new_params, opt_state)) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert {leaf.dtype for leaf in floats} == {jnp.dtype(jnp.float32)}
    for (path, old), (_, new) in zip(nnx.to_flat_state(params), nnx.to_flat_state(new_params)):
        old, new = np.asarray(old), np.asarray(new)
        assert np.all(np.isfinite(new)) and not np.array_equal(old, new), path


def test_compute_dtype_round_trips_and_rejects_bad_values(capsys):
    run = experiment({"base": "raft-small", "method": {"compute_dtype": "bfloat16"}})
    assert flat_keys(run)["method.compute_dtype"] == "bfloat16"
    assert experiment(to_dict(run)) == run
    assert override(preset("raft-small"), ["compute_dtype=bfloat16"]) == run.method
    with pytest.raises(ConfigError, match="bad value 'float16' for compute_dtype: choose one of float32, bfloat16"):
        override(preset("raft-small"), ["compute_dtype=float16"])
    with pytest.raises(ConfigError, match="bad value 'half' for method.compute_dtype"):
        experiment({"base": "raft-small", "method": {"compute_dtype": "half"}})
    with pytest.raises(ConfigError, match="compute_dtype=bfloat16: the method has no network layers"):
        build(override(preset("tv-l1"), ["compute_dtype=bfloat16", "step.learned=sizes"]))
    assert main(["config", "--method", "raft-small", "--set", "compute_dtype=fp16"]) == 2
    assert "bad value 'fp16' for compute_dtype" in capsys.readouterr().err
