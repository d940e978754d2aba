"""Checkpoints of a training run (orbax): parameters, optimiser state and the run's progress.

A run's folder (its *workdir*) holds ``config.json`` (the resolved experiment) and
``checkpoints/<step>/`` with three items: ``params`` (the ``nnx.Param`` state), ``opt_state``
and ``progress`` (JSON: step, data position, seed, training seconds). Orbax writes each step to a
temporary folder and renames it when complete, so a run killed at any moment leaves the last
complete checkpoint intact. ``load_trained(workdir)`` gives what inference needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from unroll.config import ConfigError, override
from unroll.errors import InputError
from unroll.experiment import experiment
from unroll.methods import MethodConfig, param_structure

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def _pure(state):
    """An ``nnx.State`` as plain nested dicts of arrays (what orbax stores)."""
    return nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state


def _shapes(tree) -> dict[str, tuple]:
    """``{"a/b/0/kernel": shape}`` for the leaves of a nested dict (list indices and dict keys alike)."""
    def name(path):
        return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    return {name(path): tuple(np.shape(leaf)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _on_default_device(tree):
    """``tree`` with its shape-only leaves placed on the default device: orbax restores a
    checkpoint written on other devices only onto leaves that name theirs."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    place = lambda x: (jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
                       if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None else x)
    return jax.tree.map(place, tree)


class Checkpoints:
    """The checkpoints in ``workdir/checkpoints``; ``keep`` most recent ones are kept."""

    def __init__(self, workdir: str | Path, keep: int = 2, read_only: bool = False):
        if read_only and not (Path(workdir) / CHECKPOINT_DIR).is_dir():
            raise InputError(f"{workdir}: no {CHECKPOINT_DIR} folder")
        self.directory = (Path(workdir) / CHECKPOINT_DIR).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only,
                                               enable_async_checkpointing=False)
        handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                    "progress": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, params: nnx.State, opt_state, progress: dict) -> None:
        """Write checkpoint ``step`` (replacing none: steps are unique)."""
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(_pure(params)),
            opt_state=ocp.args.StandardSave(opt_state),
            progress=ocp.args.JsonSave(progress)))

    def restore(self, step: int, params: nnx.State, opt_state) -> tuple[nnx.State, object, dict]:
        """Checkpoint ``step`` restored into the structures of ``params`` and ``opt_state`` (arrays
        placed anyhow, even split over several processes' devices), as host (numpy) arrays whatever
        devices wrote it: place them with ``jax.device_put``."""
        params, opt_state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), (params, opt_state))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_pure(params)),
            opt_state=ocp.args.StandardRestore(opt_state),
            progress=ocp.args.JsonRestore()))
        nnx.replace_by_pure_dict(params, restored["params"])
        return params, restored["opt_state"], dict(restored["progress"])

    def restore_params(self, params: nnx.State, step: int | None = None) -> nnx.State:
        """The parameters of checkpoint ``step`` (default: the newest), in the structure of ``params``
        (arrays, or ``jax.ShapeDtypeStruct`` leaves from ``nnx.eval_shape``)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise InputError(f"{self.directory}: no checkpoint found")
        self._check_fits(step, _pure(params))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_on_default_device(_pure(params)))))
        nnx.replace_by_pure_dict(params, restored["params"])
        return params

    def _check_fits(self, step: int, params: dict) -> None:
        """Raise ``InputError`` naming every parameter that is missing, extra or of another shape."""
        stored = _shapes(dict(self.manager.item_metadata(step)["params"]))
        wanted = _shapes(params)
        problems = ([f"missing {k}" for k in sorted(wanted.keys() - stored.keys())]
                    + [f"not in this method: {k}" for k in sorted(stored.keys() - wanted.keys())]
                    + [f"{k} has shape {stored[k]}, this method needs {wanted[k]}"
                       for k in sorted(wanted.keys() & stored.keys()) if stored[k] != wanted[k]])
        if problems:
            raise InputError(f"{self.directory}: checkpoint {step} does not fit this method's parameters: "
                             + "; ".join(problems))

    def close(self) -> None:
        self.manager.close()


def read_config_file(workdir: str | Path) -> dict:
    """The experiment dict saved in ``workdir/config.json``."""
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{workdir}: not a training run folder (no {CONFIG_FILE})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None


def load_trained(workdir: str | Path, overrides: list[str] = (), base: str | None = None) -> tuple[MethodConfig, nnx.State]:
    """The method of the training run in ``workdir`` (with ``overrides`` of its method keys, e.g.
    ``solver.num_iters=20``) and the parameters of its newest checkpoint. ``base``: the method
    the run must be based on (e.g. ``raft``), checked."""
    run = experiment(read_config_file(workdir))
    if base is not None and run.base != base:
        raise InputError(f"{workdir} holds a {run.base} run, not {base}; drop --method or name {run.base}")
    method = override(run.method, list(overrides))
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        return method, checkpoints.restore_params(param_structure(method))
    finally:
        checkpoints.close()
