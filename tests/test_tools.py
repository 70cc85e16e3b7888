"""fuse_bn (BN folding) and precise_bn (population statistics), against the unfused model and brute force."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, FrozenBatchNorm, LpBatchNorm1d, SyncBatchNorm


def _randomize(bn: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 2)
        bn.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.1)
        if bn.affine:
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen))
    return bn


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max().detach() / b.abs().max().detach())


# (layer, bn class, input shape); groups and missing bias in the mix
CASES = {
    "conv1d": (lambda bias: nn.Conv1d(4, 6, 3, bias=bias), BatchNorm1d, (5, 4, 9)),
    "conv2d-groups": (lambda bias: nn.Conv2d(4, 6, 3, groups=2, bias=bias), nn.BatchNorm2d, (5, 4, 7, 7)),
    "conv3d": (lambda bias: nn.Conv3d(4, 6, 2, bias=bias), BatchNorm3d, (3, 4, 4, 4, 4)),
    "convT1d-groups": (lambda bias: nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2, bias=bias), nn.BatchNorm1d,
                       (5, 4, 6)),
    "convT2d-groups": (lambda bias: nn.ConvTranspose2d(6, 4, 3, groups=2, bias=bias), BatchNorm2d, (3, 6, 5, 5)),
    "convT3d": (lambda bias: nn.ConvTranspose3d(4, 6, 2, bias=bias), nn.BatchNorm3d, (2, 4, 3, 3, 3)),
    "linear": (lambda bias: nn.Linear(4, 6, bias=bias), BatchNorm1d, (7, 4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("bias,affine", [(True, True), (False, True), (False, False)])
def test_fuse_bn_each_layer_type(name, bias, affine):
    make, bn_cls, shape = CASES[name]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = make(bias)
    bn = _randomize(bn_cls(getattr(layer, "out_channels", None) or layer.out_features, affine=affine), gen)
    model = nn.Sequential(layer, bn, nn.ReLU()).eval()
    x = torch.randn(shape, generator=gen) * 3
    fused = normlab.fuse_bn(model)
    assert isinstance(fused[1], nn.Identity) and isinstance(model[1], bn_cls)     # a copy; original untouched
    assert fused[0].bias is not None
    assert _rel_err(fused(x), model(x)) < 1e-5


def test_fuse_bn_frozen_sync_nested_and_named_pairs():
    gen = torch.Generator().manual_seed(1)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.bn = _randomize(SyncBatchNorm(3), gen)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x))) + x

    frozen = FrozenBatchNorm(5)
    frozen.load_state_dict(_randomize(nn.BatchNorm1d(5), gen).state_dict())
    model = nn.Sequential(Block(), nn.Sequential(nn.Conv2d(3, 4, 1), _randomize(nn.BatchNorm2d(4), gen)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), frozen).eval()
    model[5].train()                                  # frozen BN: eval statistics whatever its mode
    x = torch.randn(4, 3, 6, 6, generator=gen)
    with pytest.raises(ValueError, match=r"'0\.bn'.*do not directly follow"):
        normlab.fuse_bn(model)
    fused = normlab.fuse_bn(model, pairs=[("0.conv", "0.bn")])
    assert not any(isinstance(m, (nn.BatchNorm2d, SyncBatchNorm, FrozenBatchNorm)) for m in fused.modules())
    assert _rel_err(fused(x), model(x)) < 1e-5
    with pytest.raises(ValueError, match="pairs: no module named 'nope'"):
        normlab.fuse_bn(model, pairs=[("0.conv", "nope")])
    with pytest.raises(ValueError, match="is not"):
        normlab.fuse_bn(model, pairs=[("2", "0.bn")])


def test_fuse_bn_refusals_and_strict_false():
    gen = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), _randomize(nn.BatchNorm1d(4), gen), nn.ReLU(),
                          _randomize(BatchNorm1d(4), gen)).eval()
    lp = nn.Sequential(nn.Linear(3, 4), _randomize(LpBatchNorm1d(4, p=1), gen)).eval()
    x = torch.randn(6, 3, generator=gen)
    assert _rel_err(normlab.fuse_bn(lp)(x), lp(x)) < 1e-5                  # Lp BN is affine at eval too
    with pytest.raises(ValueError, match="p != 2"):
        normlab.precise_bn(lp, [x], num_samples=6)
    with pytest.raises(ValueError, match=r"'3'.*do not directly follow.*strict=False"):
        normlab.fuse_bn(model)
    loose = normlab.fuse_bn(model, strict=False)
    assert isinstance(loose[1], nn.Identity) and isinstance(loose[3], BatchNorm1d)
    assert _rel_err(loose(x), model(x)) < 1e-5
    model[1].train()
    with pytest.raises(ValueError, match=r"'1'.*training mode.*eval\(\)"):
        normlab.fuse_bn(model, strict=False)
    no_stats = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="no running statistics"):
        normlab.fuse_bn(no_stats)


# ---------------------------------------------------------------------------------------------------------- PreciseBN
def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(3, 4, 3),
                         nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5), BatchNorm1d(5)).double()


def _brute_force(net: nn.Sequential, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, list]]:
    """The inputs of each BN in every batch, computed layer by layer with every BN normalizing by its batch
    statistics (PreciseBN's definition) and Dropout off. Returns, per BN, (all its inputs as (values, C), per-batch)."""
    per_bn: list[list[torch.Tensor]] = [[], [], []]
    for x in batches:
        h, k = x, 0
        for m in net:
            if isinstance(m, (nn.BatchNorm2d, BatchNorm2d, BatchNorm1d)):
                flat = h.transpose(0, 1).reshape(h.shape[1], -1).T        # (values, C)
                per_bn[k].append(flat)
                k += 1
                dims = (0, 2, 3) if h.dim() == 4 else (0,)
                mu, var = h.mean(dims, keepdim=True), h.var(dims, unbiased=False, keepdim=True)
                shape = [1, -1] + [1] * (h.dim() - 2)
                h = (h - mu) / torch.sqrt(var + m.eps) * m.weight.view(shape) + m.bias.view(shape)
            elif not isinstance(m, nn.Dropout):
                h = m(h)
    return [(torch.cat(b), b) for b in per_bn]


def test_precise_bn_equals_population_statistics():
    net = _net()
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(n, 2, 6, 6, generator=gen, dtype=torch.float64) * 2 + 1 for n in (8, 8, 5, 8)]
    with torch.no_grad():
        for m in net:
            if hasattr(m, "running_var"):
                m.weight.uniform_(0.5, 2.0)
        truth = _brute_force(net, batches[:3])
    bns = [m for m in net if hasattr(m, "running_var")]
    params = {k: v.clone() for k, v in net.named_parameters()}
    net.eval()
    net[1].train()                                     # a mixed mode that must come back as it was
    modes = [m.training for m in net.modules()]
    used = normlab.precise_bn(net, [(x, torch.zeros(len(x))) for x in batches], num_samples=20)
    assert used == 21                                  # whole batches: 8 + 8 + 5
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())
    assert [int(m.num_batches_tracked) for m in bns] == [0, 0, 0]
    for bn, (values, _) in zip(bns, truth):
        torch.testing.assert_close(bn.running_mean, values.mean(0), rtol=0, atol=1e-10)
        torch.testing.assert_close(bn.running_var, values.var(0, unbiased=True), rtol=0, atol=1e-10)
    # the batch-average estimator: count-weighted mean of the unbiased batch variances
    normlab.precise_bn(net, batches, num_samples=21, estimator="batch-average")
    for bn, (values, parts) in zip(bns, truth):
        n = sum(len(p) for p in parts)
        avg = sum(len(p) * p.var(0, unbiased=True) for p in parts) / n
        torch.testing.assert_close(bn.running_mean, values.mean(0), rtol=0, atol=1e-10)
        torch.testing.assert_close(bn.running_var, avg, rtol=0, atol=1e-10)
        assert not torch.allclose(avg, values.var(0, unbiased=True), rtol=1e-3, atol=0)   # they differ


def test_precise_bn_errors_restore_statistics():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = [torch.randn(4, 2, 6, 6, dtype=torch.float64) for _ in range(2)]
    with pytest.raises(ValueError, match="num_samples: asked for 100 samples but data gave only 8"):
        normlab.precise_bn(net, data, num_samples=100)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net.training
    with pytest.raises(ValueError, match="num_samples: expected a positive int"):
        normlab.precise_bn(net, data, num_samples=0)
    with pytest.raises(ValueError, match="estimator"):
        normlab.precise_bn(net, data, num_samples=4, estimator="ema")
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        normlab.precise_bn(nn.Sequential(nn.Linear(2, 2)), data, num_samples=4)
    with pytest.raises(TypeError, match="data: expected batches"):
        normlab.precise_bn(net, [{"x": data[0]}], num_samples=4)
