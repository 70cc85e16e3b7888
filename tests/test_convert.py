"""normlab.convert: torch.nn norm layers -> normlab twins -> torch.nn keeps outputs, weights, buffers,
requires_grad and train/eval mode, and copies the model unless inplace=True."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.tools import TWINS


class Net(nn.Module):
    """A model with every norm type, nested, one module in eval mode and one parameter frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=None), nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.ReLU(),
            nn.Sequential(nn.Conv2d(6, 4, 1), nn.InstanceNorm2d(4, affine=True, track_running_stats=True)),
            nn.LayerNorm([4, 5, 5], bias=False))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(100, 8), nn.BatchNorm1d(8, affine=False), nn.Linear(8, 3),
                                  nn.LayerNorm(3, elementwise_affine=False))
        self.seq = nn.Sequential(nn.Conv1d(2, 3, 1), nn.InstanceNorm1d(3), nn.Conv3d(3, 3, 1), nn.BatchNorm3d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _trained() -> Net:
    torch.manual_seed(0)
    net = Net().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(3):
        loss = net(torch.randn(8, 2, 5, 5, dtype=torch.float64)).pow(2).mean()
        loss.backward(), opt.step(), opt.zero_grad()
    net.features[3].weight.requires_grad_(False)
    net.features[4].bias.requires_grad_(False)
    net.features[6].eval()
    return net


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) in TWINS or type(m) in TWINS.values()]


def _assert_same(a: nn.Module, b: nn.Module, tol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        torch.testing.assert_close(sb[k], sa[k], rtol=tol, atol=tol, msg=k)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and pa.requires_grad == pb.requires_grad, na
    for (na, ma), (nb, mb) in zip(a.named_modules(), b.named_modules()):
        assert na == nb and ma.training == mb.training, na


def test_round_trip_keeps_everything():
    net = _trained()
    mine = normlab.convert(net)
    assert len(_norms(net)) == 8
    assert all(type(m) in TWINS.values() for m in _norms(mine))
    assert all(type(m) in TWINS for m in _norms(net))           # the original is untouched
    _assert_same(net, mine)
    back = normlab.convert(mine, to="torch")
    assert all(type(m) in TWINS for m in _norms(back))
    _assert_same(net, back)
    x = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    for mode in ("train", "eval"):
        models = (net, mine, back)
        for m in models:
            getattr(m, mode)()
        y, y_mine, y_back = (m(x) for m in models)
        torch.testing.assert_close(y_mine, y, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(y_back, y, rtol=1e-9, atol=1e-9)
        _assert_same(net, mine, tol=1e-12)   # the training forward moved the running statistics alike


def test_gradients_after_convert_match():
    net = _trained()
    mine = normlab.convert(net)
    x = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    for m in (net, mine):
        m.train()
        m(x).sum().backward()
    for (n, p), (_, q) in zip(net.named_parameters(), mine.named_parameters()):
        if p.grad is None:
            assert q.grad is None, n
        else:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-9, msg=n)


def test_deep_copy_unless_inplace():
    net = _trained()
    copy = normlab.convert(net)
    assert copy is not net
    assert copy.features[0].weight is not net.features[0].weight
    with torch.no_grad():
        copy.features[0].weight.add_(1.0)
    assert not torch.equal(copy.features[0].weight, net.features[0].weight)
    same = normlab.convert(net, inplace=True)
    assert same is net and isinstance(net.features[1], normlab.BatchNorm2d)
    assert normlab.convert(net, to="torch", inplace=True) is net and type(net.features[1]) is nn.BatchNorm2d


def test_convert_a_bare_layer_and_keep_dtype():
    bn = nn.BatchNorm2d(4, dtype=torch.float64)
    new = normlab.convert(bn)
    assert type(new) is normlab.BatchNorm2d and new.weight.dtype == torch.float64
    assert new.running_mean.dtype == torch.float64 and new.num_batches_tracked.dtype == torch.long
    plain = normlab.convert(nn.BatchNorm1d(3, affine=False, track_running_stats=False))
    assert type(plain) is normlab.BatchNorm1d and plain.weight is None and plain.running_mean is None


def test_convert_bias_false_layers():
    for layer in (nn.BatchNorm2d(4, bias=False), nn.GroupNorm(2, 4, bias=False), nn.LayerNorm(4, bias=False)):
        new = normlab.convert(layer)
        assert new.bias is None and new.weight is not None
        assert normlab.convert(new, to="torch").bias is None


def test_convert_leaves_other_modules_alone():
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1), nn.BatchNorm1d(3))
    new = normlab.convert(net)
    assert type(new[0]) is nn.Linear and type(new[1]) is nn.Dropout and type(new[2]) is normlab.BatchNorm1d


def test_convert_rejects_bad_direction():
    with pytest.raises(ValueError, match="to: expected 'normlab' or 'torch'"):
        normlab.convert(nn.BatchNorm1d(3), to="numpy")
