"""``unroll train``: the data stream, checkpoints, resuming after SIGKILL, the log, and using a
trained model through ``--checkpoint``.

A tiny experiment (one level, three iterations, learned step sizes and edge weights, 32 x 40
synthetic pairs) keeps every run to seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from unroll.checkpoints import Checkpoints, load_trained
from unroll.cli import main
from unroll.config import ConfigError, to_dict
from unroll.data.augment import AugmentConfig
from unroll.data.pipeline import TrainingData, TrainDataConfig
from unroll.data.synthetic import SyntheticConfig, generate_pair
from unroll.errors import InputError
from unroll.estimator import FlowEstimator
from unroll.experiment import experiment
from unroll.flow_io import read_flow
from unroll.images import read_image, to_grey, write_image
from unroll.metrics_log import read_log
from unroll.trainer import train
from unroll.validation import validate, validation_sets

from test_datasets import write_middlebury

REPO_ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "base": "horn-schunck",
    "method": {"pyramid": {"levels": 1, "warps": 1, "median_size": 0}, "solver": {"num_iters": 3},
               "step": {"learned": "sizes"}, "smoothness": {"learned": True}},
    "optim": {"steps": 12, "learning_rate": 1e-2, "schedule": "constant"},
    "data": {"batch_size": 2, "synthetic": {"size": [32, 40], "max_translation": 3.0}},
    "run": {"checkpoint_every": 3, "log_every": 1},
    "validation": {"synthetic_pairs": 2, "real_data": ""},
}


def _config(**overrides):
    return experiment(TINY, [f"{k}={v}" for k, v in overrides.items()])


def _leaves(state):
    return {str(path): np.asarray(leaf) for path, leaf in nnx.to_flat_state(state)}


def test_batches_are_a_function_of_seed_and_step():
    config = TrainDataConfig(batch_size=3, synthetic=SyntheticConfig(size=(24, 32)))
    data = TrainingData(config, seed=5, channels=1)
    batch = data.batch(2)
    assert batch["frame1"].shape == (3, 24, 32, 1) and batch["flow"].shape == (3, 24, 32, 2)
    pair = generate_pair(config.synthetic, (5, 7))  # batch 2 holds samples 6, 7, 8
    np.testing.assert_array_equal(batch["frame2"][1], to_grey(pair["frame2"]))
    np.testing.assert_array_equal(batch["flow"][1], pair["flow"])
    again = TrainingData(config, seed=5, channels=1)
    streamed = list(again.stream(1, 4))
    assert len(streamed) == 3
    for key in batch:
        np.testing.assert_array_equal(streamed[1][key], batch[key])
    other = TrainingData(config, seed=6, channels=1).batch(2)
    assert not np.array_equal(other["flow"], batch["flow"])


def test_dataset_source_is_shuffled_per_epoch_and_augmented(tmp_path):
    write_middlebury(tmp_path)
    config = TrainDataConfig(source="middlebury", path=str(tmp_path), batch_size=1,
                             augment=AugmentConfig(crop=(8, 10), scale_prob=0.0))
    data = TrainingData(config, seed=0, channels=3)
    n = len(data.dataset)
    first_epoch = [data.sample(i) for i in range(n)]
    assert all(s["frame1"].shape == (8, 10, 3) and s["flow"].shape == (8, 10, 2) for s in first_epoch)
    np.testing.assert_array_equal(data.sample(1)["flow"], TrainingData(config, 0, 3).sample(1)["flow"])
    with pytest.raises(InputError, match="data.path"):
        TrainingData(TrainDataConfig(source="middlebury"), 0, 1)


def test_training_lowers_the_error_and_writes_the_run(tmp_path):
    config = _config(**{"optim.steps": 30})
    result = train(config, tmp_path / "run", progress=False)
    records = read_log(tmp_path / "run")
    assert len([r for r in records if r["kind"] == "train"]) == 30
    untrained = validate(FlowEstimator(config.method), validation_sets(config))["synthetic"].mean["epe"]
    assert result["validation"]["synthetic"]["epe"] < 0.97 * untrained
    assert result["params"] > 0 and set(result["validation"]) == {"synthetic"}
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == json.loads(json.dumps(result))
    assert [r["step"] for r in records if r["kind"] == "validate/synthetic"] == [30]
    assert Checkpoints(tmp_path / "run").latest_step() == 30


def _train_command(workdir, config_file):
    return [sys.executable, "-m", "unroll.cli", "train", str(config_file), "--workdir", str(workdir), "--quiet"]


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    steps = 300
    config = _config(**{"optim.steps": steps, "run.checkpoint_every": 10})
    config_file = tmp_path / "exp.json"
    config_file.write_text(json.dumps(to_dict(config)))
    train(config, tmp_path / "whole", progress=False)

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(_train_command(tmp_path / "killed", config_file), cwd=REPO_ROOT, env=env,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    checkpoints = tmp_path / "killed" / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
        if done and max(done) >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = Checkpoints(tmp_path / "killed").latest_step()
    assert 20 <= killed_at < steps

    resumed = subprocess.run(_train_command(tmp_path / "killed", config_file), cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = _leaves(load_trained(tmp_path / "whole")[1]), _leaves(load_trained(tmp_path / "killed")[1])
    assert whole.keys() == again.keys()
    for key in whole:
        np.testing.assert_array_equal(again[key], whole[key], err_msg=key)
    # the log of the resumed run reads as one run: every step once, in order
    steps_logged = [r["step"] for r in read_log(tmp_path / "killed") if r["kind"] == "train"]
    assert steps_logged == list(range(1, steps + 1))


def test_rerun_of_a_finished_run_trains_no_more(tmp_path):
    config = _config(**{"optim.steps": 4})
    first = train(config, tmp_path, progress=False)
    before = _leaves(load_trained(tmp_path)[1])
    second = train(config, tmp_path, progress=False)
    assert second["train_seconds"] == first["train_seconds"]
    after = _leaves(load_trained(tmp_path)[1])
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_a_workdir_refuses_another_config(tmp_path):
    train(_config(**{"optim.steps": 3}), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="keys that differ: optim.learning_rate"):
        train(_config(**{"optim.steps": 3, "optim.learning_rate": 0.5}), tmp_path, progress=False)


def test_hand_tuned_method_has_nothing_to_train(tmp_path):
    with pytest.raises(InputError, match="nothing to train"):
        train(experiment(TINY | {"method": {"pyramid": {"levels": 1}}}), tmp_path, progress=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train(_config(**{"optim.steps": 6, "optim.learning_rate": 0.05}), workdir, progress=False)
    return workdir


def _frames(folder):
    pair = generate_pair(SyntheticConfig(size=(32, 40), max_translation=3.0), 123)
    paths = [folder / "a.png", folder / "b.png"]
    for path, frame in zip(paths, (pair["frame1"], pair["frame2"])):
        write_image(path, np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return paths


def test_flow_with_checkpoint_uses_the_trained_parameters(trained_run, tmp_path):
    first, second = _frames(tmp_path)
    out = tmp_path / "flow.flo"
    assert main(["flow", str(first), str(second), "-o", str(out), "--checkpoint", str(trained_run)]) == 0
    method, params = load_trained(trained_run)
    trained = FlowEstimator(method)
    trained.load(params)
    expected = trained(read_image(first), read_image(second))
    np.testing.assert_allclose(read_flow(out)[0], expected, atol=1e-5)
    untrained = FlowEstimator(method)(read_image(first), read_image(second))
    assert np.abs(expected - untrained).max() > 1e-4  # training moved the parameters


def test_an_estimator_built_from_parameters_needs_all_of_them(trained_run):
    method, params = load_trained(trained_run)
    flat = nnx.to_flat_state(params)
    partial = nnx.from_flat_state([(path, leaf) for path, leaf in flat if "scales" not in path])
    assert len(partial) < len(flat)
    with pytest.raises(ValueError, match="params lack 1 of the method's arrays, e.g. .*scales"):
        FlowEstimator(method, params=partial)


def test_eval_with_checkpoint(trained_run, tmp_path):
    write_middlebury(tmp_path / "data")
    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(tmp_path / "data"), "--checkpoint", str(trained_run),
                 "--set", "pyramid.median_size=3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint"] == str(trained_run) and report["config"]["pyramid"]["median_size"] == 3
    assert np.isfinite(report["mean"]["epe"])


def test_checkpoint_errors_are_clear(trained_run, tmp_path, capsys):
    first, second = _frames(tmp_path)
    args = ["flow", str(first), str(second), "-o", str(tmp_path / "f.flo")]
    assert main(args + ["--checkpoint", str(trained_run), "--method", "tv-l1"]) == 2
    assert "holds a horn-schunck run, not tv-l1" in capsys.readouterr().err
    assert main(args + ["--checkpoint", str(tmp_path)]) == 2
    assert "not a training run folder" in capsys.readouterr().err
    assert main(args + ["--checkpoint", str(trained_run), "--set", "step.learned=gru"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_tensorboard_events_when_tensorboardx_is_installed(tmp_path):
    pytest.importorskip("tensorboardX")
    train(_config(**{"optim.steps": 2}), tmp_path, progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
