"""The papers' architectures with a norm= switch (normlab.layers.factory spec) and an init scheme.

build("mlp")    Ioffe & Szegedy Fig. 1: 784-100-100-100-10, sigmoid, norm before each sigmoid.
build("vgg")    VGG-like conv net (Santurkar et al. Fig. 1) for 28x28x1 or 32x32x3: conv3x3 -> norm -> ReLU, max-pools.
build("linear") Santurkar et al. deep linear net: 25 square 10x10 layers, no bias, optional norm between layers.
build("resnet") CIFAR-style ResNet (He et al. 2016, depth 6n+2), zero-init last norm gamma per block (Wu & He).
weight_layers(model) lists the Linear/Conv layers in forward order: "layer i" is weight_layers(model)[i].
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers.factory import norm_layer
from .registry import Registry

__all__ = ["build", "weight_layers", "names", "MODELS", "VGG_CONFIGS", "IOFFE_INIT_STD"]

# name -> model class; each registers itself below and builds from (in_shape, num_classes, norm, **model_kw) with its
# classmethod `from_shape` (the model_kw a class takes are its constructor's other parameters, config.py reads them)
MODELS = Registry("model")

# Ioffe & Szegedy only say "small random Gaussian values"; normlab takes N(0, 0.1^2) for weights and zero biases
# ([open] in SPEC §2 ioffe-mnist; model_kw init_std changes it).
IOFFE_INIT_STD = 0.1

# channel counts and 'M' (2x2 max-pool); Simonyan & Zisserman's configurations A (VGG-11) and B (VGG-13).
VGG_CONFIGS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg8": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"],
}


def _uses_norm(norm: str) -> bool:
    return norm.strip().lower() != "none"


@MODELS.register("mlp")
class MLP(nn.Sequential):
    """Flatten -> [Linear -> norm -> sigmoid] x len(hidden) -> Linear. Bias dropped where a norm follows (its
    beta does the bias's job, Ioffe & Szegedy Sec. 3.2)."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (100, 100, 100), num_classes: int = 10,
                 norm: str = "none", activation: str = "sigmoid") -> None:
        acts = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ValueError(f"activation: expected one of {', '.join(acts)}, got {activation!r}")
        mods: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            mods += [nn.Linear(width, h, bias=not _uses_norm(norm)), norm_layer(norm, h, ndim=1), acts[activation]()]
            width = h
        mods.append(nn.Linear(width, num_classes))
        super().__init__(*mods)

    @classmethod
    def from_shape(cls, in_shape: tuple[int, ...], num_classes: int, norm: str, kw: dict) -> "MLP":
        return cls(math.prod(in_shape), tuple(kw.pop("hidden", (100, 100, 100))), num_classes, norm,
                   kw.pop("activation", "sigmoid"))


def _image_shape(name: str, in_shape: tuple[int, ...]) -> None:
    if len(in_shape) != 3:
        raise ValueError(f"in_shape: {name} expects (C, H, W), got {in_shape}")


@MODELS.register("vgg")
class VGG(nn.Module):
    """features: [conv3x3 -> norm -> ReLU | maxpool2]...; classifier: Linear(s) on the flattened features.

    Input (N, C, H, W) with H = W = 28 or 32 (any size >= 1 works: a pool is skipped once the map is 1x1).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, norm: str = "none",
                 cfg: list | str = "vgg11", width: float = 1.0, hidden: int = 0) -> None:
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in VGG_CONFIGS:
                raise ValueError(f"cfg: unknown VGG config {cfg!r}; valid: {', '.join(VGG_CONFIGS)} or a list")
            cfg = VGG_CONFIGS[cfg]
        if not width > 0:
            raise ValueError(f"width: expected a positive scale factor, got {width!r}")
        c, h, w = in_shape
        mods: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                if min(h, w) >= 2:
                    mods.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            out = max(1, int(round(v * width)))
            mods += [nn.Conv2d(c, out, 3, padding=1, bias=not _uses_norm(norm)), norm_layer(norm, out, ndim=2),
                     nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*mods)
        flat = c * h * w
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden, bias=not _uses_norm(norm)), norm_layer(norm, hidden, ndim=1),
                     nn.ReLU(inplace=True)]
            flat = hidden
        head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @classmethod
    def from_shape(cls, in_shape: tuple[int, ...], num_classes: int, norm: str, kw: dict) -> "VGG":
        _image_shape("vgg", in_shape)
        return cls(in_shape, num_classes, norm, kw.pop("cfg", "vgg11"), kw.pop("width", 1.0), kw.pop("hidden", 0))


@MODELS.register("linear")
class DeepLinear(nn.Sequential):
    """depth square Linear(d, d, bias=False) layers with a norm (ndim=1) after every layer but the last."""

    def __init__(self, d: int = 10, depth: int = 25, norm: str = "none") -> None:
        mods: list[nn.Module] = []
        for i in range(depth):
            mods.append(nn.Linear(d, d, bias=False))
            if i < depth - 1 and _uses_norm(norm):
                mods.append(norm_layer(norm, d, ndim=1))
        super().__init__(*mods)

    @classmethod
    def from_shape(cls, in_shape: tuple[int, ...], num_classes: int, norm: str, kw: dict) -> "DeepLinear":
        d = math.prod(in_shape)
        if num_classes != d:
            raise ValueError(f"num_classes: the deep linear net is square, expected {d} outputs, got {num_classes}")
        return cls(d, kw.pop("depth", 25), norm)


class BasicBlock(nn.Module):
    """x -> conv3x3 -> norm -> ReLU -> conv3x3 -> norm (+ shortcut) -> ReLU. The shortcut (1x1 conv + norm when the
    shape changes) is registered first and run first, so module order is forward order."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not _uses_norm(norm)),
                                          norm_layer(norm, cout))
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not _uses_norm(norm))
        self.norm1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not _uses_norm(norm))
        self.norm2 = norm_layer(norm, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut(x)
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + s)


@MODELS.register("resnet")
class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): conv3x3 stem, three stages of n BasicBlocks at widths (16, 32, 64) * width, strides
    (1, 2, 2), global average pool, Linear."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, norm: str = "bn", depth: int = 8,
                 width: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"depth: expected 6n+2 >= 8 (8, 14, 20, 32, ...), got {depth!r}")
        n = (depth - 2) // 6
        widths = [max(1, int(round(c * width))) for c in (16, 32, 64)]
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], widths[0], 3, 1, 1, bias=not _uses_norm(norm)),
                                  norm_layer(norm, widths[0]), nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, c in enumerate(widths):
            for j in range(n):
                blocks.append(BasicBlock(cin, c, 2 if (i > 0 and j == 0) else 1, norm))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    @classmethod
    def from_shape(cls, in_shape: tuple[int, ...], num_classes: int, norm: str, kw: dict) -> "ResNet":
        _image_shape("resnet", in_shape)
        zero = kw.pop("zero_init_residual", True)
        model = cls(in_shape, num_classes, norm, kw.pop("depth", 8), kw.pop("width", 1.0))
        model.zero_init_residual = zero   # read by build() after the init scheme
        return model


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every Linear/Conv layer in forward order (module registration order, which the
    models here keep equal to execution order). A DDP/DataParallel wrapper is looked through."""
    model = getattr(model, "module", model)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def _init(model: nn.Module, scheme: str, init_std: float) -> None:
    """default: torch's own; glorot: Xavier-uniform weights (Glorot & Bengio 2010; Santurkar's VGG), zero biases;
    ioffe / gaussian: N(0, init_std^2) weights, zero biases."""
    if scheme == "default":
        return
    for _, m in weight_layers(model):
        if scheme == "glorot":
            nn.init.xavier_uniform_(m.weight)
        elif scheme in ("ioffe", "gaussian"):
            nn.init.normal_(m.weight, 0.0, init_std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _zero_last_gamma(model: nn.Module) -> None:
    """Wu & He (GN paper, Sec. 5.1, after Goyal et al.): gamma = 0 in each block's last norm, so blocks start as
    identities."""
    for m in model.modules():
        if isinstance(m, BasicBlock) and getattr(m.norm2, "weight", None) is not None:
            nn.init.zeros_(m.norm2.weight)


_INITS = ("default", "glorot", "ioffe", "gaussian")


def names() -> list[str]:
    return MODELS.names()


def build(name: str, norm: str = "none", in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
          init: str = "default", **kw) -> nn.Module:
    """Build model `name` with norm layers from the factory spec `norm` ("none", "bn", "gn:8", ...).

    in_shape: one input's shape, (C, H, W) for images, (D,) for the linear net. num_classes: outputs.
    init: "default" (torch), "glorot", "ioffe"/"gaussian" (N(0, init_std^2), init_std=IOFFE_INIT_STD unless given).
    kw per model: mlp(hidden=(100, 100, 100), activation="sigmoid"); vgg(cfg="vgg11" | list, width=1.0, hidden=0);
    linear(depth=25); resnet(depth=8, width=1.0, zero_init_residual=True).
    """
    cls = MODELS.get(name, "name")
    if init not in _INITS:
        raise ValueError(f"init: unknown scheme {init!r}; valid: {', '.join(_INITS)}")
    if not isinstance(norm, str):
        raise TypeError(f"norm: expected a factory spec string such as 'bn', got {type(norm).__name__}")
    init_std = float(kw.pop("init_std", IOFFE_INIT_STD))
    in_shape = tuple(int(s) for s in in_shape)
    try:
        model = cls.from_shape(in_shape, num_classes, norm, kw)   # pops the keywords it takes
    except TypeError as e:
        raise TypeError(f"model_kw for {name!r}: {e}") from e
    if kw:
        raise TypeError(f"model_kw: unexpected keyword(s) {', '.join(sorted(kw))} for model {name!r}")
    _init(model, init, init_std)
    if getattr(model, "zero_init_residual", False):
        _zero_last_gamma(model)
    return model
