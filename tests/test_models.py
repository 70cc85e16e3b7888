"""normlab.models: architectures, norm placement, init schemes, weight_layers order, and parity with torch.nn."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab import layers, models, tools
from normlab.models import build, weight_layers


def _forward_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The Linear/Conv modules in the order they actually run (brute force with forward hooks)."""
    seen: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(m)) for _, m in weight_layers(model)]
    model(x)
    for h in handles:
        h.remove()
    return seen


def test_ioffe_mlp_structure():
    m = build("mlp", norm="bn", init="ioffe")
    lin = [mod for _, mod in weight_layers(m)]
    assert [(l.in_features, l.out_features) for l in lin] == [(784, 100), (100, 100), (100, 100), (100, 10)]
    assert [l.bias is None for l in lin] == [True, True, True, False]   # bias dropped where BN follows
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Flatten"] + ["Linear", "BatchNorm1d", "Sigmoid"] * 3 + ["Linear"]   # BN before each sigmoid
    assert isinstance(m[2], layers.BatchNorm1d)
    plain = build("mlp", norm="none")
    assert all(l.bias is not None for _, l in weight_layers(plain))
    assert [type(x).__name__ for x in plain] == ["Flatten"] + ["Linear", "Identity", "Sigmoid"] * 3 + ["Linear"]
    assert m(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_ioffe_init_is_small_gaussian():
    torch.manual_seed(0)
    m = build("mlp", norm="none", init="ioffe")
    w = weight_layers(m)[0][1].weight.detach()
    assert float(w.std()) == pytest.approx(models.IOFFE_INIT_STD, rel=0.02)   # 78,400 draws
    assert float(w.mean()) == pytest.approx(0.0, abs=0.002)
    assert all(float(l.bias.detach().abs().max()) == 0 for _, l in weight_layers(m))
    m2 = build("mlp", norm="none", init="gaussian", init_std=0.5)
    assert float(weight_layers(m2)[0][1].weight.detach().std()) == pytest.approx(0.5, rel=0.02)


def test_glorot_init_bounds():
    torch.manual_seed(0)
    m = build("vgg", norm="bn", init="glorot", width=0.25)
    for _, l in weight_layers(m):
        w = l.weight.detach()
        fan_in = w[0].numel()
        fan_out = w.shape[0] * w[0, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert float(w.abs().max()) <= bound
        if w.numel() > 5000:
            assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)   # U(-b, b) has std b/sqrt(3)


@pytest.mark.parametrize("shape, cfg, convs", [((1, 28, 28), "vgg11", 8), ((3, 32, 32), "vgg11", 8),
                                               ((3, 32, 32), "vgg13", 10), ((1, 28, 28), "vgg13", 10)])
def test_vgg_shapes_and_norm_placement(shape, cfg, convs):
    m = build("vgg", norm="bn", in_shape=shape, cfg=cfg, width=0.125)
    wl = weight_layers(m)
    assert sum(isinstance(l, nn.Conv2d) for _, l in wl) == convs and isinstance(wl[-1][1], nn.Linear)
    feats = list(m.features)
    for i, mod in enumerate(feats):
        if isinstance(mod, nn.Conv2d):   # conv -> norm -> ReLU, conv bias dropped
            assert mod.bias is None and isinstance(feats[i + 1], layers.BatchNorm2d)
            assert isinstance(feats[i + 2], nn.ReLU)
    assert [l.out_channels for _, l in wl[:2]] == ([8, 16] if cfg == "vgg11" else [8, 8])   # 64 * 0.125
    assert m(torch.randn(2, *shape)).shape == (2, 10)


def test_vgg_with_normlab_norms_equals_torch_nn_twin():
    torch.manual_seed(0)
    ours = build("vgg", norm="bn", in_shape=(1, 28, 28), width=0.125, cfg="vgg8").double()
    twin = tools.convert(ours, to="torch")
    assert any(isinstance(m, nn.BatchNorm2d) and not isinstance(m, layers.BatchNorm2d) for m in twin.modules())
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    for net in (ours, twin):
        nn.functional.cross_entropy(net(x), y).backward()
    torch.testing.assert_close(ours(x), twin(x))
    for (na, a), (nb, b) in zip(ours.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=na)


def test_deep_linear_net_closed_form():
    torch.manual_seed(0)
    m = build("linear", norm="none", in_shape=(10,), num_classes=10)
    wl = weight_layers(m)
    assert len(wl) == 25 and all(l.bias is None and l.weight.shape == (10, 10) for _, l in wl)
    prod = torch.eye(10, dtype=torch.float64)
    for _, l in wl:
        prod = l.weight.detach().double() @ prod
    x = torch.randn(7, 10, dtype=torch.float64)
    torch.testing.assert_close(m.double()(x), x @ prod.T)
    bn = build("linear", norm="bn", in_shape=(10,), num_classes=10)
    assert sum(isinstance(x, layers.BatchNorm1d) for x in bn) == 24   # between the 25 layers
    assert isinstance(bn[1], layers.BatchNorm1d) and len(weight_layers(bn)) == 25
    with pytest.raises(ValueError, match="num_classes: the deep linear net is square"):
        build("linear", in_shape=(10,), num_classes=3)


def test_resnet_zero_init_and_structure():
    torch.manual_seed(0)
    m = build("resnet", norm="bn", in_shape=(3, 32, 32), depth=14, width=0.5)
    blocks = [b for b in m.modules() if isinstance(b, models.BasicBlock)]
    assert len(blocks) == 6 and all(float(b.norm2.weight.detach().abs().sum()) == 0 for b in blocks)
    assert sum(isinstance(l, nn.Conv2d) for _, l in weight_layers(m)) == 1 + 12 + 2   # stem, 2 per block, 2 shortcuts
    # with gamma = 0 each block is relu(shortcut(x)): check the first block (identity shortcut) exactly
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    h = m.stem(x)
    torch.testing.assert_close(blocks[0](h), torch.relu(h))
    assert m(x).shape == (2, 10)
    m2 = build("resnet", norm="gn:4", in_shape=(3, 32, 32), zero_init_residual=False)
    assert float(m2.blocks[0].norm2.weight.detach().min()) == 1.0
    with pytest.raises(ValueError, match="depth: expected 6n\\+2"):
        build("resnet", depth=10)


@pytest.mark.parametrize("name, shape, kw", [("mlp", (1, 28, 28), {}), ("vgg", (3, 32, 32), {"width": 0.125}),
                                             ("linear", (10,), {"depth": 5}), ("resnet", (3, 32, 32), {"depth": 14})])
def test_weight_layers_are_in_forward_order(name, shape, kw):
    m = build(name, norm="bn", in_shape=shape, num_classes=10, **kw)
    order = _forward_order(m, torch.randn(4, *shape))
    assert order == [l for _, l in weight_layers(m)]


def test_build_errors():
    with pytest.raises(ValueError, match="name: unknown model 'vit'; valid: mlp, vgg, linear, resnet"):
        build("vit")
    with pytest.raises(ValueError, match="init: unknown scheme 'he'"):
        build("mlp", init="he")
    with pytest.raises(TypeError, match="model_kw: unexpected keyword.* depthh"):
        build("linear", in_shape=(10,), depthh=3)
    with pytest.raises(ValueError, match="spec: unknown norm 'xx'"):
        build("mlp", norm="xx")
    with pytest.raises(ValueError, match="cfg: unknown VGG config"):
        build("vgg", cfg="vgg99")
