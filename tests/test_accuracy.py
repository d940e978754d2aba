"""Accuracy of the classical presets on real Middlebury data with ground truth, through `unroll eval`.

Bounds (mean EPE over RubberWhale and Urban2): tv-l1 <= 0.30, horn-schunck <= 0.45,
lucas-kanade <= 0.65. For reference on these two: OpenCV DIS-medium 0.435, scikit-image
TV-L1 0.469, OpenCV DeepFlow 0.246 (see docs/classical.md).
"""

from __future__ import annotations

import json

import pytest

from unroll.cli import main

BOUNDS = {"tv-l1": 0.30, "horn-schunck": 0.45, "lucas-kanade": 0.65}


@pytest.mark.parametrize("method", sorted(BOUNDS))
def test_mean_epe_on_middlebury(method, shared_data, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["--no-cache", "eval", "--method", method, "--data", str(shared_data), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["sequences"]) == {"RubberWhale", "Urban2"}
    assert result["mean"]["epe"] <= BOUNDS[method]
    zero_flow_epe = {"RubberWhale": 1.256, "Urban2": 8.393}
    for name, metrics in result["sequences"].items():
        assert metrics["epe"] < 0.6 * zero_flow_epe[name]
