"""Activation distributions: per-unit percentiles/mean/variance/histograms against NumPy on the captured layer
output, the step-to-step deltas, sites, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normlab
from normlab.diagnostics import DistributionTracker, distributions, unit_percentiles


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 12, bias=False), normlab.BatchNorm1d(12), nn.Sigmoid(),
                         nn.Linear(12, 12, bias=False), normlab.BatchNorm1d(12), nn.Sigmoid(), nn.Linear(12, 4))


@pytest.mark.parametrize("qs", [(15, 50, 85), (1, 20, 80, 99), (0, 100)])
def test_unit_percentiles_match_numpy(qs):
    v = torch.randn(5, 37, dtype=torch.float64)
    np.testing.assert_allclose(unit_percentiles(v, qs).numpy(), np.percentile(v.numpy(), qs, axis=1), rtol=1e-12)


def test_mlp_layer_output_against_numpy():
    model = mlp()
    x = torch.randn(64, 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rows = distributions(model, x, layers=[0, "4"], percentiles=(1, 20, 80, 99), bins=10)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k   # BN running statistics untouched by the extra pass
    with torch.no_grad():
        h0 = model[0](x).double().numpy()
        h4 = model[:5](x).double().numpy()   # in training mode, as the recorder ran
    for r, h in zip(rows, (h0, h4)):
        np.testing.assert_allclose(r["mean"], h.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r["var"], h.var(0), rtol=1e-9, atol=1e-12)
        for q in (1, 20, 80, 99):
            np.testing.assert_allclose(r["percentiles"][str(q)], np.percentile(h, q, axis=0), rtol=1e-9, atol=1e-12)
        lo, hi = h.min(), h.max()
        w = (hi - lo) / 2
        edges = np.asarray(r["hist"]["edges"])
        np.testing.assert_allclose(edges[[0, -1]], [lo - w, hi + w], rtol=1e-6)
        counts, _ = np.histogram(h, bins=10, range=(edges[0], edges[-1]))
        assert r["hist"]["counts"] == counts.tolist() and sum(counts) == h.size
        assert r["units"] == 12 and r["m"] == 64 and r["finite"] and r["dmean"] is None
    assert rows[0]["index"] == 0 and rows[1]["index"] is None and rows[1]["layer"] == "4"
    assert abs(np.mean(rows[1]["mean"])) < 1e-6   # BN output: per-unit mean 0 over the batch


def test_site_input_of_sigmoid_is_bn_output():
    model = mlp()
    x = torch.randn(32, 10)
    (a,) = distributions(model, x, layers="5", site="input")
    (b,) = distributions(model, x, layers="4", site="output")
    assert a["mean"] == b["mean"] and a["percentiles"] == b["percentiles"]


def test_conv_units_are_channels_and_deltas():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 3, padding=1))
    x = torch.randn(4, 2, 5, 5)
    tr = DistributionTracker(layers=[0, 1], hist_range=(-2.0, 2.0), bins=4, units=[2])
    first = tr.record(model, x, step=0)
    with torch.no_grad():
        h = model[0](x).double()
        unit = h.transpose(0, 1).reshape(3, -1).numpy()
    r = first[0]
    assert r["units"] == 3 and r["m"] == 100 and r["unit_ids"] == [2]
    np.testing.assert_allclose(r["mean"], [unit[2].mean()], rtol=1e-9)
    np.testing.assert_allclose(r["percentiles"]["50"], [np.median(unit[2])], rtol=1e-9)
    assert r["hist"]["under"] == int((unit < -2).sum()) and r["hist"]["over"] == int((unit > 2).sum())
    assert sum(r["hist"]["counts"]) + r["hist"]["under"] + r["hist"]["over"] == 300
    # the recorded output is W u, before the in-place ReLU that follows (layer 0 has negative values)
    assert r["percentiles"]["15"][0] < 0
    with torch.no_grad():
        model[0].bias += torch.tensor([0.5, -1.0, 2.0])   # shifts each channel's mean, not its variance
    second = tr.record(model, x, step=7)
    d = second[0]
    assert d["prev_step"] == 0
    assert d["dmean"] == pytest.approx((0.5 + 1.0 + 2.0) / 3, rel=1e-5)
    assert d["dvar"] == pytest.approx(0.0, abs=1e-5)
    assert d["dmean_l2"] == pytest.approx(np.sqrt(0.25 + 1 + 4), rel=1e-5)
    assert d["hist"]["edges"] == r["hist"]["edges"]   # fixed bins across records


def test_non_finite_flagged():
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    x = torch.randn(8, 3)
    (r,) = distributions(model, x)
    assert r["finite"] is False and r["hist"]["nonfinite"] >= 1
    assert np.isnan(r["percentiles"]["50"][0]) and np.isfinite(r["percentiles"]["50"][1])


def test_bad_input():
    model = mlp()
    x = torch.randn(8, 10)
    with pytest.raises(ValueError, match="unknown layer name 'fc9'"):
        distributions(model, x, layers="fc9")
    with pytest.raises(ValueError, match="index 5 is out of range"):
        distributions(model, x, layers=5)
    with pytest.raises(ValueError, match="site"):
        distributions(model, x, site="middle")
    with pytest.raises(ValueError, match="percentiles"):
        distributions(model, x, percentiles=(50, 101))
    with pytest.raises(ValueError, match="units: indices must be in 0..11"):
        distributions(model, x, layers=0, units=[12])
    with pytest.raises(ValueError, match="hist_range"):
        distributions(model, x, hist_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="bins"):
        distributions(model, x, bins=0)


def test_histogram_edges_are_float64_and_bin_what_they_say():
    """Edges 0.1, 0.3, 0.5, 0.7 are not float32 numbers; values placed between a float64 edge and its float32
    rounding must be counted in the bin that the reported edges give them (numpy.histogram's rule)."""
    lin = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
    e32 = [float(torch.tensor(e, dtype=torch.float32)) for e in (0.3, 0.5)]
    vals = [0.1, 0.2, (0.3 + e32[0]) / 2, 0.4, (0.5 + e32[1]) / 2, 0.6, 0.7, 0.05, 0.75]
    x = torch.tensor(vals, dtype=torch.float64).view(-1, 1)
    (r,) = distributions(lin, x, layers=0, bins=3, hist_range=(0.1, 0.7))
    assert r["hist"]["edges"] == np.linspace(0.1, 0.7, 4).tolist()   # exactly, float64
    counts, _ = np.histogram(np.array(vals), bins=np.asarray(r["hist"]["edges"]))
    assert r["hist"]["counts"] == counts.tolist() == [2, 2, 3]
    assert r["hist"]["under"] == 1 and r["hist"]["over"] == 1
