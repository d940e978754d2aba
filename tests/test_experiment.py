"""Experiment config files: every key typed and checked when the file is read, with the key named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unroll.ablation import variants
from unroll.config import ConfigError, to_dict
from unroll.experiment import experiment, load_experiment
from unroll.methods import preset
from unroll.study import load_study
from unroll.training import OptimConfig

EXAMPLE = """
base = "tv-l1"
seed = 3

[method.smoothness]
alpha = 4          # an int where a float is expected is fine
learned = true

[method.solver]
level_iters = [5, 4]

[optim]
steps = 50
schedule = "cosine"

[data]
source = "chairs"
path = "FlyingChairs_release"

[data.synthetic]
size = [48, 64]

[data.augment]
crop = [32, 48]
"""


def _write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_sets_keys_on_top_of_the_base_preset(tmp_path):
    config = load_experiment(_write(tmp_path, EXAMPLE))
    assert config.base == "tv-l1" and config.seed == 3
    assert config.method.smoothness.alpha == 4.0 and isinstance(config.method.smoothness.alpha, float)
    assert config.method.smoothness.learned is True
    # untouched keys keep the base preset's values, not the dataclass defaults
    assert config.method.step == preset("tv-l1").step
    assert config.method.smoothness.penalty == preset("tv-l1").smoothness.penalty
    assert config.method.solver.level_iters == (5, 4)
    assert config.optim.steps == 50 and config.optim.schedule == "cosine"
    assert config.data.synthetic.size == (48, 64) and config.data.augment.crop == (32, 48)


def test_json_file_and_round_trip(tmp_path):
    config = load_experiment(_write(tmp_path, EXAMPLE))
    again = load_experiment(_write(tmp_path, json.dumps(to_dict(config)), "exp.json"))
    assert again == config


def test_overrides_apply_after_the_file_and_base_first(tmp_path):
    path = _write(tmp_path, EXAMPLE)
    config = load_experiment(path, ["optim.steps=7", "method.smoothness.alpha=9", "data.augment.crop=none"])
    assert config.optim.steps == 7 and config.method.smoothness.alpha == 9.0 and config.data.augment.crop is None
    rebased = load_experiment(path, ["base=horn-schunck"])
    assert rebased.method.step == preset("horn-schunck").step
    assert rebased.method.smoothness.alpha == 4.0  # the file's keys still apply on the new base


@pytest.mark.parametrize("text, message", [
    ("[method.smoothness]\nalpah = 3\n", "'method.smoothness.alpah'"),
    ("[methd]\nx = 1\n", "'methd'"),
    ("[method.smoothness]\nalpha = \"big\"\n", "method.smoothness.alpha: expected float"),
    ("[optim]\nsteps = 1.5\n", "optim.steps: expected int"),
    ("[method.smoothness]\nlearned = 1\n", "method.smoothness.learned: expected bool"),
    ("[method.step]\nlearned = \"grue\"\n", "method.step.learned: choose one of"),
    ("[data.synthetic]\nsize = [48]\n", "data.synthetic.size: expected a list of 2 items"),
    ("[data.synthetic]\nsize = [48, -1]\n", "data.synthetic"),
    ("method = 3\n", "method is a section: expected a table"),
    ("[optim.steps]\nx = 1\n", "optim.steps is a value, not a section"),
    ("base = \"horn-shunck\"\n", "unknown method 'horn-shunck'"),
    ("[optim]\nsteps = 0\n", "optim.steps: must be >= 1"),
    ("seed = 5\n[validation]\nsynthetic_seed = 5\n", "validation.synthetic_seed must differ"),
    ("[data.augment]\ncrop = [32, 48]\nhflip_prob = 0.0\n",
     "data.augment.crop, data.augment.hflip_prob: augmentation applies to data sets"),
])
def test_bad_keys_and_values_name_the_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert message in str(info.value)


def test_error_names_the_file_and_lists_the_section_keys(tmp_path):
    path = _write(tmp_path, "[optim]\nstpes = 3\n")
    with pytest.raises(ConfigError, match=str(path)) as info:
        load_experiment(path)
    assert "optim.steps" in str(info.value) and "method.data.kind" not in str(info.value)


def test_bad_override_names_the_key_not_the_file(tmp_path):
    path = _write(tmp_path, EXAMPLE)
    with pytest.raises(ConfigError, match="unknown config key 'optim.stpes'; valid keys: optim.accumulate, optim.clip.*optim.steps") as info:
        load_experiment(path, ["optim.stpes=3"])
    assert str(path) not in str(info.value)


@pytest.mark.parametrize("name, text, message", [
    ("exp.toml", "base = \n", "not valid TOML"),
    ("exp.json", "{", "not valid JSON"),
    ("exp.yaml", "", "unknown config file type"),
    ("exp.json", "[1, 2]", "top level"),
])
def test_corrupt_files_are_named(tmp_path, name, text, message):
    path = _write(tmp_path, text, name)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_experiment(tmp_path / "absent.toml")


def test_defaults_without_a_file():
    config = experiment()
    assert config.method == preset("horn-schunck") and config.validation.synthetic_seed != config.seed


def test_a_network_base_brings_its_papers_training_recipe():
    assert experiment({"base": "pwc-net"}).optim.loss_weights == (0.32, 0.08, 0.02, 0.01, 0.005)
    assert experiment({"base": "gmflow"}).optim.gamma == 0.9
    assert experiment({"base": "raft"}).optim == OptimConfig()
    assert experiment({"base": "flownet-s"}, ["optim.learning_rate=3e-5"]).optim.loss == "epe"


@pytest.mark.parametrize("name", ["ablation_hs", "hybrid_hs", "raft_small", "lineage"])
def test_shipped_experiment_files_load(name):
    path = Path(__file__).resolve().parent.parent / "experiments" / f"{name}.toml"
    if name == "lineage":
        assert len(load_study(path)) == 16
    elif name == "ablation_hs":
        configs = variants(load_experiment(path))
        assert len(configs) == 6
        assert {c.optim.operator_lr_scale.step for c in configs.values()} == {10.0}
    else:
        assert load_experiment(path).base in ("horn-schunck", "raft-small")
