"""FrozenBatchNorm and freeze(): BN's eval transform with buffers only."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.layers import (BatchNorm1d, FrozenBatchNorm, FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d,
                            SyncBatchNorm)


def _trained_bn(bn: nn.Module) -> nn.Module:
    """Random affine and running statistics, as after training."""
    torch.manual_seed(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features))
        bn.running_var.copy_(torch.rand(bn.num_features) + 0.5)
        bn.num_batches_tracked.fill_(17)
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.num_features))
            bn.bias.copy_(torch.randn(bn.num_features))
    return bn


@pytest.mark.parametrize("affine", [True, False])
def test_loads_torch_checkpoint_and_equals_bn_eval(affine):
    bn = _trained_bn(nn.BatchNorm2d(4, eps=1e-3, affine=affine)).double().eval()
    frozen = FrozenBatchNorm2d(4, eps=1e-3, affine=affine).double()
    frozen.load_state_dict(bn.state_dict())                  # num_batches_tracked accepted and ignored
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == set(bn.state_dict()) - {"num_batches_tracked"}
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    for training in (True, False):                            # eval statistics in both modes
        frozen.train(training)
        torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=1e-12)
    # the input gradient is the per-channel scale gamma / sqrt(var + eps)
    frozen(x).sum().backward()
    scale = (bn.weight if affine else 1.0) / torch.sqrt(bn.running_var + 1e-3)
    torch.testing.assert_close(x.grad, scale.view(1, 4, 1, 1).expand_as(x).detach(), rtol=0, atol=1e-12)
    # and back: a BN loads the frozen layer's state_dict
    bn2 = nn.BatchNorm2d(4, eps=1e-3, affine=affine).double().eval()
    bn2.load_state_dict(frozen.state_dict())
    torch.testing.assert_close(bn2(x), bn(x), rtol=0, atol=1e-12)


def test_ranks_dtype_and_errors():
    bn = _trained_bn(BatchNorm1d(3)).eval()
    f1 = FrozenBatchNorm1d(3)
    f1.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 6)
    torch.testing.assert_close(f1(x), bn(x), rtol=1e-6, atol=1e-6)
    xb = x.to(torch.bfloat16)
    assert f1(xb).dtype == torch.bfloat16
    torch.testing.assert_close(f1(xb).float(), bn(xb.float()), rtol=2e-2, atol=2e-2)
    generic = FrozenBatchNorm(3)
    assert generic(torch.randn(2, 3, 2, 2, 2, 2)).shape == (2, 3, 2, 2, 2, 2)
    with pytest.raises(ValueError, match="4D"):
        FrozenBatchNorm2d(3)(x)
    with pytest.raises(ValueError, match="5D"):
        FrozenBatchNorm3d(3)(x)
    with pytest.raises(ValueError, match="at least 2D"):
        generic(torch.randn(3))
    with pytest.raises(ValueError, match="num_features"):
        f1(torch.randn(4, 5))
    with pytest.raises(ValueError, match="num_features"):
        FrozenBatchNorm(0)
    with pytest.raises(TypeError, match="floating-point"):
        f1(torch.ones(4, 3, dtype=torch.long))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 4, 3), _trained_bn(nn.BatchNorm2d(4)), nn.ReLU())
        self.sync = _trained_bn(SyncBatchNorm(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 5), _trained_bn(BatchNorm1d(5)))

    def forward(self, x):
        return self.head(self.sync(self.body(x)))


def test_freeze_model_and_fine_tune():
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(6, 2, 6, 6)
    expected = net.eval()(x)
    frozen = normlab.freeze(net.train())
    assert isinstance(net.body[1], nn.BatchNorm2d)           # copy: the original keeps its BNs
    kinds = [type(m) for m in frozen.modules() if isinstance(m, FrozenBatchNorm)]
    assert kinds == [FrozenBatchNorm2d, FrozenBatchNorm, FrozenBatchNorm1d]
    assert frozen.training and frozen.body[1].training          # modes kept, statistics frozen anyway
    torch.testing.assert_close(frozen(x), expected, rtol=1e-6, atol=1e-6)
    names = {n for n, _ in frozen.named_parameters()}
    assert names == {"body.0.weight", "body.0.bias", "head.1.weight", "head.1.bias"}
    # one fine-tuning step moves the conv/linear weights, never the frozen statistics or affine
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    opt = torch.optim.SGD(frozen.parameters(), lr=0.1)
    frozen(x).pow(2).mean().backward()
    opt.step()
    after = frozen.state_dict()
    assert not torch.equal(after["body.0.weight"], before["body.0.weight"])
    for k in ("body.1.running_mean", "body.1.running_var", "body.1.weight", "sync.bias", "head.2.weight"):
        assert torch.equal(after[k], before[k]), k
    # inplace, and the root itself being a BN
    same = _Net()
    assert normlab.freeze(same, inplace=True) is same and isinstance(same.sync, FrozenBatchNorm)
    assert isinstance(normlab.freeze(nn.BatchNorm3d(2)), FrozenBatchNorm3d)


def test_freeze_refuses_bn_without_running_stats():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match=r"'1\.0'.*no running statistics"):
        normlab.freeze(model)
    with pytest.raises(ValueError, match="p=1"):
        normlab.freeze(nn.Sequential(normlab.layers.LpBatchNorm1d(3, p=1)))


def test_bn_without_bias_freezes_fuses_and_syncs():
    gen = torch.Generator().manual_seed(4)
    bn = BatchNorm1d(3, bias=False)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(3, generator=gen))
        bn.running_mean.copy_(torch.randn(3, generator=gen))
    model = nn.Sequential(nn.Linear(2, 3), bn, nn.Sequential(nn.BatchNorm1d(3, bias=False))).eval()
    x = torch.randn(5, 2, generator=gen)
    frozen = normlab.freeze(model)
    assert frozen[1].bias is None and "bias" not in dict(frozen[1].named_buffers())
    torch.testing.assert_close(frozen(x), model(x), rtol=1e-6, atol=1e-6)
    fused = normlab.fuse_bn(frozen, strict=False)
    assert isinstance(fused[1], nn.Identity)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-6)
    synced = normlab.convert_sync_batchnorm(model)
    assert isinstance(synced[2][0], SyncBatchNorm) and synced[2][0].bias is None
    torch.testing.assert_close(synced(x), model(x), rtol=1e-6, atol=1e-6)
