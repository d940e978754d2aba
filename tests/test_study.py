"""``unroll study``: variants from a file, one table over methods of any kind, reuse of finished runs."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import imageio.v3 as iio
import pytest

from unroll import study
from unroll.cli import main
from unroll.config import ConfigError
from unroll.experiment import RECIPES
from unroll.methods import count_params

from test_ablation import toml
from test_trainer import TINY

SHARED = {k: v for k, v in TINY.items() if k not in ("base", "method")} | {"optim": {"steps": 3}}
VARIANTS = """
[variants]
"hs short" = ["base=horn-schunck", "method.pyramid.levels=1", "method.pyramid.warps=1",
              "method.pyramid.median_size=0", "method.solver.num_iters=3"]
"hs + step sizes" = ["base=horn-schunck", "method.pyramid.levels=1", "method.pyramid.warps=1",
                     "method.pyramid.median_size=0", "method.solver.num_iters=3", "method.step.learned=sizes",
                     "optim.learning_rate=1e-2"]
"""


def _study_file(tmp_path, variants: str = VARIANTS, shared: dict = SHARED):
    path = tmp_path / "study.toml"
    path.write_text(toml(shared) + variants)
    return path


def test_each_variant_is_the_shared_experiment_with_its_overrides(tmp_path):
    variants = study.load_study(_study_file(tmp_path), ["optim.steps=5"])
    assert list(variants) == ["hs short", "hs + step sizes"]
    short, learned = variants.values()
    assert (short.method.solver.num_iters, short.method.pyramid.levels, count_params(short.method)) == (3, 1, 0)
    assert learned.method.step.learned == "sizes" and count_params(learned.method) > 0
    assert learned.optim.learning_rate == 1e-2 and short.optim.learning_rate != 1e-2
    for variant in variants.values():  # shared keys, and the command line's overrides for all
        assert (variant.data, variant.seed, variant.optim.steps) == (variants["hs short"].data, 0, 5)
        assert variant.data.synthetic.size == (32, 40)


def test_a_network_base_brings_its_paper_recipe(tmp_path):
    variants = study.load_study(_study_file(tmp_path, '[variants]\npwc = ["base=pwc-net"]\n'))
    pwc = variants["pwc"]
    assert (pwc.base, pwc.optim.learning_rate, pwc.optim.loss) == ("pwc-net", RECIPES["pwc-net"].learning_rate, "epe")
    assert pwc.optim.steps == 3  # the shared budget overrides the recipe's


@pytest.mark.parametrize("variants, message", [
    ("", "needs a \\[variants\\] table"),
    ("[variants]\n", "needs a \\[variants\\] table"),
    ('[variants]\na = "base=tv-l1"\n', "variants.a must be a list"),
    ('[variants]\n"a/b" = ["base=tv-l1"]\n', "bad variant name 'a/b'"),
    ('[variants]\na = ["base=tv-l1", "method.solver.num_iter=3"]\n', "variants.a: unknown config key 'method.solver.num_iter'"),
    ('[variants]\na = ["base=no-such-method"]\n', "variants.a: .*no-such-method"),
])
def test_bad_study_files_fail_naming_the_problem(tmp_path, variants, message):
    with pytest.raises(ConfigError, match=message):
        study.load_study(_study_file(tmp_path, variants))


def test_study_writes_one_table_over_all_variants_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    path, workdir = _study_file(tmp_path), tmp_path / "runs"
    assert main(["study", str(path), "--workdir", str(workdir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed == (workdir / "study.md").read_text()
    assert printed.splitlines()[0].startswith("| variant | params | train s | synthetic EPE |")
    assert "synthetic time s" in printed.splitlines()[0]
    rows = list(csv.DictReader(io.StringIO((workdir / "study.csv").read_text())))
    assert [r["variant"] for r in rows] == ["hs short", "hs + step sizes"]
    assert (rows[0]["params"], float(rows[0]["train_s"])) == ("0", 0.0)
    assert int(rows[1]["params"]) > 0 and float(rows[1]["train_s"]) > 0
    assert all(float(r["synthetic_time_s"]) > 0 and float(r["synthetic_epe"]) > 0 for r in rows)
    assert (workdir / "hs-+-step-sizes" / "result.json").exists()
    assert iio.imread(workdir / "study.png").shape[0] > 100

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study, "train", no_training)
    monkeypatch.setattr(study, "validate", no_training)
    assert main(["study", str(path), "--workdir", str(workdir), "--quiet"]) == 0
    assert capsys.readouterr().out == printed


def test_over_seeds_each_learned_variant_trains_per_seed_and_the_table_gives_mean_and_spread(tmp_path, capsys):
    path, workdir = _study_file(tmp_path), tmp_path / "runs"
    assert main(["study", str(path), "--workdir", str(workdir), "--quiet", "--seeds", "3", "5"]) == 0
    runs = list(csv.DictReader(io.StringIO((workdir / "study.csv").read_text())))
    assert [(r["variant"], r["seed"]) for r in runs] == [("hs short", ""), ("hs + step sizes", "3"),
                                                         ("hs + step sizes", "5")]
    assert json.loads((workdir / "hs-+-step-sizes" / "seed-5" / "config.json").read_text())["seed"] == 5
    epes = [float(r["synthetic_epe"]) for r in runs[1:]]
    assert epes[0] != epes[1]  # the seed changes the training stream

    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| variant | runs | params | train s | synthetic EPE |")
    short, learned = (line.split(" | ") for line in table[2:])
    assert short[1] == "1" and short[4] == f"{float(runs[0]['synthetic_epe']):.3f}"
    assert learned[1] == "2"
    assert learned[4] == f"{statistics.fmean(epes):.3f} ± {statistics.stdev(epes):.3f}"

    with pytest.raises(ConfigError, match="repeat a seed"):
        study.run_study(study.load_study(path), workdir, seeds=[1, 1])


def test_the_lineage_study_file_lists_every_method():
    variants = study.load_study(Path(__file__).parents[1] / "experiments" / "lineage.toml")
    bases = {v.base for v in variants.values()}
    assert {"horn-schunck", "lucas-kanade", "tv-l1", "flownet-s", "flownet-c", "pwc-net", "raft-small", "raft",
            "gmflow"} <= bases
    hybrids = [v for v in variants.values() if v.base == "horn-schunck" and count_params(v.method)]
    assert len(hybrids) >= 2
    budgets = {(v.optim.steps, v.data, v.seed, v.validation) for v in variants.values()}
    assert len(budgets) == 1  # equal conditions
