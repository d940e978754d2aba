"""Tests for unroll.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unroll.errors import InputError
from unroll.flow_io import read_flo
from unroll.metrics import flow_metrics, valid_mask


def _angle_deg(u, v, ug, vg):
    """Angle between (u, v, 1) and (ug, vg, 1) in degrees, with plain math."""
    dot = u * ug + v * vg + 1.0
    return math.degrees(math.acos(dot / math.sqrt((u * u + v * v + 1) * (ug * ug + vg * vg + 1))))


# (estimate, ground truth) per pixel; the last two ground truths are unknown.
PIXELS = [
    ((1.0, 0.0), (0.0, 0.0)),  # A: EPE 1 (not > 1), AAE 45 deg
    ((3.0, 4.0), (0.0, 0.0)),  # B: EPE 5 (not > 5), Fl outlier
    ((0.0, 0.0), (0.0, 0.0)),  # C: EPE 0, AAE 0
    ((1.0, 1.0), (1.0, -1.0)),  # D: EPE 2, AAE acos(1/3)
    ((104.0, 0.0), (100.0, 0.0)),  # E: EPE 4 > 3 but < 5 % of |gt| = 5: no Fl outlier
    ((7.0, 7.0), (1.6666668e9, 1.6666668e9)),  # F: unknown (Middlebury marker)
    ((np.nan, 0.0), (np.nan, 0.0)),  # G: unknown (NaN), estimate NaN too
]


def _field():
    flow = np.array([[p[0] for p in PIXELS]], np.float32)  # (1, 7, 2)
    gt = np.array([[p[1] for p in PIXELS]], np.float32)
    return flow, gt


def test_valid_mask():
    _, gt = _field()
    np.testing.assert_array_equal(valid_mask(gt), [[True] * 5 + [False, False]])
    edge = np.array([[[1e9, -1e9], [np.inf, 0.0], [0.0, 1.0000001e9]]])
    np.testing.assert_array_equal(valid_mask(edge), [[True, False, False]])


def test_hand_computed_metrics():
    flow, gt = _field()
    m = flow_metrics(flow, gt)
    assert m["n_valid"] == 5
    assert m["epe"] == pytest.approx((1 + 5 + 0 + 2 + 4) / 5)
    angles = [
        45.0,
        math.degrees(math.acos(1 / math.sqrt(26))),
        0.0,
        math.degrees(math.acos(1 / 3)),
        _angle_deg(104, 0, 100, 0),
    ]
    assert angles[0] == pytest.approx(_angle_deg(1, 0, 0, 0))
    assert m["aae"] == pytest.approx(sum(angles) / 5, rel=1e-6)
    assert m["px1"] == pytest.approx(60.0)  # B, D, E
    assert m["px3"] == pytest.approx(40.0)  # B, E
    assert m["px5"] == pytest.approx(0.0)
    assert m["fl_all"] == pytest.approx(20.0)  # B only
    for key, value in m.items():
        assert type(value) is (int if key == "n_valid" else float), key


def test_explicit_valid_mask_is_anded():
    flow, gt = _field()
    valid = np.ones((1, 7), bool)
    valid[0, 1] = False  # drop B
    valid[0, 6] = True  # G stays invalid: its ground truth is NaN
    m = flow_metrics(flow, gt, valid)
    assert m["n_valid"] == 4
    assert m["epe"] == pytest.approx((1 + 0 + 2 + 4) / 4)
    assert m["fl_all"] == 0.0 and m["px3"] == pytest.approx(25.0)


def test_errors():
    flow, gt = _field()
    with pytest.raises(InputError, match=r"shape.*\(1, 7, 2\).*\(1, 6, 2\)"):
        flow_metrics(flow, gt[:, :6])
    with pytest.raises(InputError, match="flow"):
        flow_metrics(flow[..., :1], gt[..., :1])
    with pytest.raises(InputError, match="valid"):
        flow_metrics(flow, gt, np.ones((7, 1), bool))
    with pytest.raises(InputError, match="no valid pixels"):
        flow_metrics(flow, gt, np.zeros((1, 7), bool))
    bad = flow.copy()
    bad[0, 0, 0] = np.nan  # NaN estimate at a valid pixel
    with pytest.raises(InputError, match="non-finite"):
        flow_metrics(bad, gt)


def test_zero_flow_on_rubberwhale(shared_data):
    path = shared_data / "RubberWhale" / "flow10.flo"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    gt = read_flo(path)
    m = flow_metrics(np.zeros_like(gt), gt)
    assert m["n_valid"] == 388 * 584 - 3622
    assert m["epe"] == pytest.approx(1.256, abs=1e-3)
    assert m["px1"] == pytest.approx(74.4, abs=0.1)
    assert m["px3"] == pytest.approx(1.7, abs=0.1)
    # a perfect estimate has no error at all, even where the gt holds 1.6666668e9
    perfect = flow_metrics(gt, gt)
    assert perfect["epe"] == 0.0 and perfect["px1"] == 0.0
    assert perfect["aae"] == pytest.approx(0.0, abs=1e-4)
