"""``train(config, workdir)``: the training loop of an experiment, resumable from its checkpoints.

The workdir holds ``config.json``, ``checkpoints/`` (see ``unroll.checkpoints``), ``log.jsonl``
(see ``unroll.metrics_log``) and, once finished, ``result.json`` (final validation, parameter
count, training seconds). Running it again on the same workdir resumes from the newest
checkpoint and, because the data stream and every random draw are functions of (seed, step),
ends with the same parameters as a run that was never interrupted.

The step runs data-parallel on every device of every process (``unroll.distributed``); with
several processes, each loads its slice of every batch, and only process 0 writes the log and
the result (all of them take part in writing a checkpoint, which orbax writes once).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from unroll import distributed
from unroll.checkpoints import CONFIG_FILE, Checkpoints, read_config_file
from unroll.config import ConfigError, flat_keys, to_dict
from unroll.data.pipeline import TrainingData
from unroll.errors import InputError
from unroll.estimator import FlowEstimator
from unroll.experiment import ExperimentConfig, experiment
from unroll.files import atomic_write_bytes
from unroll.methods import build, frame_channels, param_count
from unroll.metrics_log import MetricsLog
from unroll.training import check_batch_size, learning_rate, make_train_step, optimizer
from unroll.validation import validate, validation_sets

RESULT_FILE = "result.json"


def write_json(path: Path, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def claim_workdir(workdir: Path, config: ExperimentConfig) -> None:
    """Write ``config.json``, or check that an existing one describes the same experiment."""
    path = workdir / CONFIG_FILE
    if path.exists():
        saved = flat_keys(experiment(read_config_file(workdir)))
        differ = sorted(k for k, v in flat_keys(config).items() if saved.get(k) != v)
        if differ:
            raise ConfigError(f"{workdir} holds a run of another config (keys that differ: {', '.join(differ)}); "
                              "use a new --workdir, or the same config to resume")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(path, to_dict(config))


def summarise(reports: dict) -> dict:
    """``{set: mean metrics}`` of validation reports, JSON-ready."""
    return {name: report.mean for name, report in reports.items()}


def train(config: ExperimentConfig, workdir: str | Path, progress: bool = True) -> dict:
    """Train ``config`` in ``workdir`` (resuming if it holds a checkpoint) and return the result dict.

    The result (also written to ``workdir/result.json``) holds ``params`` (count),
    ``train_seconds`` (excluding compilation and validation), ``steps`` and ``validation``:
    ``{set: mean metrics}`` of the final parameters.
    """
    workdir = Path(workdir)
    claim_workdir(workdir, config)
    mesh = distributed.mesh()
    check_batch_size(config.data.batch_size, mesh.size, config.optim.accumulate)
    primary = jax.process_index() == 0
    model = build(config.method, keep_trajectory=True, seed=config.seed)
    step_fn, params, opt_state = make_train_step(model, config.optim, mesh)
    num_params = param_count(params)
    if num_params == 0:
        raise InputError("the method has no learned operators, so there is nothing to train; make one learned, "
                         "e.g. --set method.step.learned=gru (see docs/learned.md)")
    checkpoints = Checkpoints(workdir, keep=config.run.keep_checkpoints)
    latest = checkpoints.latest_step()
    start = latest or 0
    progress_state = {"step": 0, "data_position": 0, "seed": config.seed, "train_seconds": 0.0}
    if latest is not None:  # resume (step 0: start from imported weights, see start_from)
        placement = jax.tree.map(lambda leaf: leaf.sharding, (params, opt_state))
        params, opt_state, progress_state = checkpoints.restore(latest, params, opt_state)
        params, opt_state = jax.device_put((params, opt_state), placement, may_alias=False)
    log = MetricsLog(workdir, start, enabled=primary)
    data = TrainingData(config.data, config.seed, frame_channels(config.method.data), jax.process_index(),
                        jax.process_count())
    estimator = FlowEstimator(config.method, params=nnx.state(model, nnx.Param))  # no second initialisation
    sets = validation_sets(config)
    schedule = learning_rate(config.optim)
    total = config.optim.steps
    train_seconds = progress_state["train_seconds"]
    try:
        bar = tqdm(total=total, initial=start, desc=workdir.name, unit="step", file=sys.stderr,
                   disable=None if progress and primary else True, dynamic_ncols=True)
        batches = data.stream(start, total, lambda batch: distributed.put_batch(batch, mesh))
        for step in range(start, total):
            batch = next(batches)
            tick = time.perf_counter()
            if step == start:
                compile_start = tick
                step_fn = step_fn.lower(params, opt_state, batch).compile()
                log.write(step, "compile", {"seconds": time.perf_counter() - compile_start})
                tick = time.perf_counter()
            params, opt_state, measured = step_fn(params, opt_state, batch)
            measured = {k: float(v) for k, v in measured.items()}
            train_seconds += time.perf_counter() - tick
            if not np.isfinite(measured["loss"]):
                raise FloatingPointError(f"step {step + 1}: the loss is {measured['loss']}; lower "
                                         "optim.learning_rate or check the data")
            done = step + 1
            bar.update(1)
            if done % config.run.log_every == 0 or done == total:
                bar.set_postfix(loss=f"{measured['loss']:.3f}", epe=f"{measured['epe']:.3f}")
                log.write(done, "train", measured | {"learning_rate": float(schedule(step)),
                                                     "train_seconds": train_seconds})
            if done % config.run.checkpoint_every == 0 or done == total:
                checkpoints.save(done, params, opt_state,
                                 {"step": done, "data_position": done * config.data.batch_size,
                                  "seed": config.seed, "train_seconds": train_seconds})
            if (config.run.validate_every and done % config.run.validate_every == 0) or done == total:
                estimator.load(jax.device_get(params))
                reports = validate(estimator, sets)
                for name, report in reports.items():
                    log.write(done, f"validate/{name}", report.mean)
        bar.close()
    finally:
        checkpoints.close()
        log.close()
    if start >= total:  # already finished: measure the saved parameters
        estimator.load(jax.device_get(params))
        reports = validate(estimator, sets)
    result = {"params": num_params, "steps": total, "train_seconds": train_seconds,
              "validation": summarise(reports)}
    if primary:
        write_json(workdir / RESULT_FILE, result)
    return result


def start_from(workdir: str | Path, config: ExperimentConfig, params: nnx.State) -> None:
    """Make ``workdir`` a run of ``config`` whose step-0 checkpoint holds ``params`` (e.g. imported
    weights): ``unroll flow|eval --checkpoint workdir`` uses them, and ``unroll train`` of the same
    config (``workdir/config.json``) trains on from them."""
    workdir = Path(workdir)
    if (workdir / CONFIG_FILE).exists():
        raise InputError(f"{workdir} already holds a run; choose a new folder")
    claim_workdir(workdir, config)
    checkpoints = Checkpoints(workdir, keep=config.run.keep_checkpoints)
    try:
        checkpoints.save(0, params, optimizer(config.optim).init(params),
                         {"step": 0, "data_position": 0, "seed": config.seed, "train_seconds": 0.0})
    finally:
        checkpoints.close()
