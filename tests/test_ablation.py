"""``unroll ablate``: the variants, the tables and chart, and reuse of finished runs."""

from __future__ import annotations

import csv
import io

import imageio.v3 as iio
import pytest

from unroll import ablation, study
from unroll.cli import main
from unroll.config import ConfigError
from unroll.experiment import experiment
from unroll.methods import count_params

from test_trainer import TINY

STUDY = TINY | {"method": {"pyramid": {"levels": 1, "warps": 1, "median_size": 0}, "solver": {"num_iters": 3}},
                "optim": {"steps": 3},
                "ablation": {"data": ["method.data.learned_channels=2"], "prefilter": []}}


def test_variants_swap_one_operator_at_a_time():
    config = experiment(STUDY)
    found = ablation.variants(config)
    assert list(found) == ["hand-tuned", "learned data", "learned smoothness", "learned step", "all learned"]
    base = found["hand-tuned"].method
    assert base == config.method and count_params(base) == 0
    assert found["learned data"].method == base.__class__(**{**base.__dict__, "data": base.data.__class__(
        **{**base.data.__dict__, "learned_channels": 2})})
    assert found["learned step"].method.step.learned == "sizes"
    assert found["learned step"].method.smoothness == base.smoothness
    everything = found["all learned"].method
    assert (everything.data.learned_channels, everything.smoothness.learned, everything.step.learned,
            everything.pyramid.learned_prefilter) == (2, True, "sizes", False)
    for variant in found.values():  # same data, budget and seed
        assert (variant.data, variant.optim, variant.seed) == (config.data, config.optim, config.seed)


def test_the_base_must_be_hand_tuned():
    with pytest.raises(ConfigError, match="hand-tuned"):
        ablation.variants(experiment(TINY))


def test_ablate_writes_tables_and_chart_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    config_file = tmp_path / "study.toml"
    config_file.write_text(toml(STUDY))
    workdir = tmp_path / "study"
    assert main(["ablate", str(config_file), "--workdir", str(workdir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed == (workdir / "ablation.md").read_text()
    rows = list(csv.DictReader(io.StringIO((workdir / "ablation.csv").read_text())))
    assert [r["variant"] for r in rows] == ["hand-tuned", "learned data", "learned smoothness", "learned step",
                                            "all learned"]
    assert rows[0]["params"] == "0" and float(rows[0]["train_s"]) == 0.0
    assert all(int(r["params"]) > 0 for r in rows[1:])
    assert int(rows[-1]["params"]) >= sum(int(r["params"]) for r in rows[1:-1])  # context nets read all features
    assert {"synthetic_epe", "synthetic_px1", "synthetic_px3", "synthetic_px5"} <= set(rows[0])
    image = iio.imread(workdir / "ablation.png")
    assert image.ndim == 3 and image.shape[0] > 100

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study, "train", no_training)
    monkeypatch.setattr(study, "validate", no_training)
    assert main(["ablate", str(config_file), "--workdir", str(workdir), "--quiet"]) == 0
    assert capsys.readouterr().out == printed


def test_a_changed_study_refuses_the_old_workdir(tmp_path):
    workdir = tmp_path / "study"
    ablation.run_ablation(experiment(STUDY), workdir, progress=False)
    with pytest.raises(Exception, match="keys that differ: optim.steps"):
        ablation.run_ablation(experiment(STUDY | {"optim": {"steps": 4}}), workdir, progress=False)


def toml(mapping: dict, prefix: str = "") -> str:
    """A minimal TOML writer for the nested dicts of these tests."""
    lines, tables = [], []
    for key, value in mapping.items():
        if isinstance(value, dict):
            tables.append(toml(value, f"{prefix}{key}."))
        else:
            lines.append(f"{key} = {_value(value)}")
    header = [f"[{prefix[:-1]}]"] if prefix and lines else []
    return "\n".join(header + lines + [""] + tables)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return repr(value)
