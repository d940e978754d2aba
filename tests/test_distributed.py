"""Data-parallel training (``unroll.distributed``): many devices give the step, the checkpoints
and the data stream of one device.

JAX fixes its device count when it starts, so the multi-device cases run in a subprocess with
``--xla_force_host_platform_device_count`` (CPU devices); this process keeps its one device.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from unroll import distributed
from unroll.checkpoints import load_trained
from unroll.config import to_dict
from unroll.data.pipeline import TrainDataConfig, TrainingData
from unroll.data.synthetic import SyntheticConfig
from unroll.errors import InputError
from unroll.experiment import experiment
from unroll.metrics_log import read_log
from unroll.trainer import train
from unroll.training import check_batch_size

from test_trainer import TINY

TESTS = Path(__file__).resolve().parent


def _env(devices: int) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())


def _python(code: str, *args, devices: int = 4) -> None:
    """Run ``code`` in a fresh Python with ``devices`` CPU devices (cwd: tests/); fail with its stderr."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=TESTS,
                            env=_env(devices), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _leaves(params) -> dict[str, np.ndarray]:
    return {str(path): np.asarray(leaf) for path, leaf in nnx.to_flat_state(params)}


STEP = """
    import sys
    import jax, numpy as np
    from flax import nnx
    from unroll import distributed
    from unroll.config import override
    from unroll.methods import build, preset
    from unroll.training import OptimConfig, make_train_step
    from test_training import translation_batch

    assert jax.device_count() == 4
    method = override(preset("tv-l1"), ["pyramid.levels=1", "pyramid.warps=1", "pyramid.median_size=0",
                                        "solver.num_iters=2", "step.learned=sizes", "smoothness.learned=true"])
    batch = jax.device_get(translation_batch(n=4))
    runs = {"plain": (None, 1, False), "one": (distributed.mesh(jax.devices()[:1]), 1, False),
            "four": (distributed.mesh(), 1, False), "two_accumulate": (distributed.mesh(jax.devices()[:2]), 2, False),
            "four_sharded_state": (distributed.mesh(), 1, True)}
    out = {}
    for name, (mesh, accumulate, shard_state) in runs.items():
        optim = OptimConfig(steps=10, learning_rate=1e-2, schedule="constant", accumulate=accumulate,
                            shard_state=shard_state)
        step, params, opt_state = make_train_step(build(method, keep_trajectory=True), optim, mesh)
        for k in range(2):
            placed = batch if mesh is None else distributed.put_batch(batch, mesh)
            params, opt_state, measured = step(params, opt_state, placed)
            out |= {f"{name}/{key}/{k}": np.asarray(value) for key, value in measured.items()}
        if name == "four":
            assert all(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
                       for leaf in jax.tree.leaves((params, opt_state)))
            assert [s.data.shape[0] for s in placed["frame1"].addressable_shards] == [1, 1, 1, 1]
        if name == "four_sharded_state":  # Adam's moments of the 16-channel kernels in quarters
            assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))
            split = [leaf for leaf in jax.tree.leaves(opt_state) if not leaf.sharding.is_fully_replicated]
            assert split and all(s.data.size * 4 == leaf.size for leaf in split for s in leaf.addressable_shards)
        out |= {f"{name}/{path}": np.asarray(leaf) for path, leaf in nnx.to_flat_state(params)}
    np.savez(sys.argv[1], **out)
"""


def test_a_step_on_four_devices_equals_the_step_on_one(tmp_path):
    _python(STEP, tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    plain = {key.partition("/")[2]: out[key] for key in out.files if key.startswith("plain/")}
    for key, value in plain.items():
        # one device through the mesh: the plain jitted step, bit for bit
        np.testing.assert_array_equal(out[f"one/{key}"], value, err_msg=key)
        # four devices, and two devices with two micro-batches each: the same up to rounding
        np.testing.assert_allclose(out[f"four/{key}"], value, rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(out[f"two_accumulate/{key}"], value, rtol=1e-5, atol=1e-6, err_msg=key)
        # and with the optimiser state split over the four devices
        np.testing.assert_allclose(out[f"four_sharded_state/{key}"], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_batch_size_must_split_over_devices_and_micro_batches(tmp_path):
    check_batch_size(8, 4, 2)
    with pytest.raises(InputError, match=r"data.batch_size=6 must be a multiple of 4 \(the device count 4\)"):
        check_batch_size(6, 4, 1)
    with pytest.raises(InputError, match=r"multiple of 2 \(the device count 1 x optim.accumulate=2\)"):
        train(experiment(TINY, ["data.batch_size=3", "optim.accumulate=2"]), tmp_path, progress=False)


TRAIN = """
    import json, shutil, sys
    import jax
    from unroll import compile_cache
    from unroll.experiment import experiment
    from unroll.trainer import train

    assert jax.device_count() == 4
    config, whole, resumed = experiment(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3]
    compile_cache.enable(f"{whole}-cache")  # the second run loads the first one's programs
    train(config, whole, progress=False)
    shutil.copytree(whole, resumed)
    shutil.rmtree(f"{resumed}/checkpoints/6")
    train(config, resumed, progress=False)
"""

RUN = TINY | {"optim": TINY["optim"] | {"steps": 6}, "data": TINY["data"] | {"batch_size": 4},
              "validation": TINY["validation"] | {"synthetic_pairs": 1}}


def test_a_four_device_checkpoint_resumes_on_four_and_on_one_device(tmp_path):
    four, four_resumed, one_resumed = tmp_path / "four", tmp_path / "four_resumed", tmp_path / "one_resumed"
    _python(TRAIN, json.dumps(RUN), four, four_resumed)
    whole = _leaves(load_trained(four)[1])
    again = _leaves(load_trained(four_resumed)[1])
    for key in whole:  # resumed from step 3 on the same devices: bit for bit
        np.testing.assert_array_equal(again[key], whole[key], err_msg=key)

    shutil.copytree(four, one_resumed)
    shutil.rmtree(one_resumed / "checkpoints" / "6")
    train(experiment(RUN), one_resumed, progress=False)  # this process has one device
    moved = _leaves(load_trained(one_resumed)[1])
    for key in whole:  # the same steps 4 to 6 on one device: equal up to rounding
        np.testing.assert_allclose(moved[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert [r["step"] for r in read_log(one_resumed) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_run_with_split_optimiser_state_resumes_bit_for_bit(tmp_path):
    run = RUN | {"optim": RUN["optim"] | {"shard_state": True}}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _python(TRAIN, json.dumps(run), whole, resumed)
    expected, again = _leaves(load_trained(whole)[1]), _leaves(load_trained(resumed)[1])
    for key in expected:
        np.testing.assert_array_equal(again[key], expected[key], err_msg=key)


def test_process_slices_make_the_global_batch():
    config = TrainDataConfig(batch_size=4, synthetic=SyntheticConfig(size=(12, 16)))
    whole = TrainingData(config, seed=3, channels=1)
    for count in (2, 4):
        for step in (0, 5):
            slices = [TrainingData(config, 3, 1, index, count).batch(step) for index in range(count)]
            for key, value in whole.batch(step).items():
                np.testing.assert_array_equal(np.concatenate([s[key] for s in slices]), value, err_msg=key)
    with pytest.raises(InputError, match="data.batch_size=4 must be a multiple of 3"):
        TrainingData(config, 3, 1, 0, 3)


def test_initialize_is_a_no_op_for_one_process_and_checks_the_id(monkeypatch):
    for name in distributed.LAUNCHER_PROCESS_COUNT:
        monkeypatch.delenv(name, raising=False)
    distributed.initialize()
    distributed.initialize(num_processes=1, process_id=0)
    with pytest.raises(InputError, match="process id 2 is not one of the 2 processes' ids 0 .. 1"):
        distributed.initialize("localhost:1", 2, 2)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    with pytest.raises(InputError, match="process id 5 is not one of the 3"):
        distributed.initialize(process_id=5)


EVALUATE = """
    import sys
    import jax, numpy as np, pytest
    from helpers import textured_pair
    from unroll.config import override
    from unroll.data.datasets import Sample
    from unroll.errors import InputError
    from unroll.estimator import FlowEstimator
    from unroll.evaluation import evaluate
    from unroll.methods import preset

    assert jax.device_count() == 4
    def sample(k, shape):
        frame1, frame2 = textured_pair(shape, shift=(0.3 * k, 0.5), seed=k)
        return Sample(f"pair{k}", frame1[..., None], frame2[..., None], np.broadcast_to([0.5, 0.3 * k], shape + (2,)).astype(np.float32),
                      np.ones(shape, bool))
    # six pairs of one size (a batch of 4, then 2 padded to 4) and one of another (1 padded to 4)
    samples = [sample(k, (24, 28) if k != 2 else (20, 32)) for k in range(7)]
    est = FlowEstimator(override(preset("tv-l1"), ["pyramid.levels=2", "solver.num_iters=5", "step.learned=sizes"]))
    one, four = evaluate(est, samples, "synthetic", progress=False), evaluate(est, samples, "synthetic", batch=4,
                                                                              progress=False)
    with pytest.raises(InputError, match="batch 6: must be a multiple of the device count 4"):
        evaluate(est, samples, "synthetic", batch=6)
    # one program per frame size: every batch, full or not, is padded to 4 pairs, one per device
    assert sorted(shape for _, shape in est.compile_seconds if len(shape) == 4) == [(4, 20, 32, 1), (4, 24, 28, 1)]
    np.savez(sys.argv[1], names=list(one.rows), batch_names=list(four.rows),
             one=[[r[k] for k in ("epe", "aae", "px1")] for r in one.rows.values()],
             four=[[r[k] for k in ("epe", "aae", "px1")] for r in four.rows.values()])
"""


def test_sharded_evaluation_equals_the_per_pair_one(tmp_path):
    _python(EVALUATE, tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    assert list(out["batch_names"]) == list(out["names"]) == [f"pair{k}" for k in range(7)]
    np.testing.assert_allclose(out["four"], out["one"], rtol=1e-5, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
    """Two ``unroll train`` processes of two CPU devices each, joined by ``jax.distributed`` on
    localhost: one log, one checkpoint, the same result in both, and the parameters of one device."""
    run = RUN | {"optim": RUN["optim"] | {"steps": 4}}
    config_file = tmp_path / "exp.json"
    config_file.write_text(json.dumps(to_dict(experiment(run))))
    command = [sys.executable, "-m", "unroll.cli", "train", str(config_file), "--workdir", str(tmp_path / "two"),
               "--quiet", "--no-cache", "--coordinator", f"localhost:{_free_port()}", "--num-processes", "2"]
    procs = [subprocess.Popen(command + ["--process-id", str(i)], cwd=TESTS.parent, env=_env(2),
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        errors = [proc.communicate(timeout=300)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    results = [err.strip().splitlines()[-1].partition(" -> ")[2] for err in errors]  # workdir; EPE
    assert results[0] == results[1] and "synthetic: EPE" in results[0]
    assert [r["step"] for r in read_log(tmp_path / "two") if r["kind"] == "train"] == [1, 2, 3, 4]

    train(experiment(run), tmp_path / "one", progress=False)
    one, two = _leaves(load_trained(tmp_path / "one")[1]), _leaves(load_trained(tmp_path / "two")[1])
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
