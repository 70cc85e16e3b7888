"""Model-level utilities on the layers (docs/tools.md).

convert                  swap torch.nn norm layers for normlab's twins and back
convert_sync_batchnorm   BatchNorm*d -> normlab SyncBatchNorm (statistics over a torch.distributed group)
precise_bn               recompute BN population statistics over many samples, weights frozen (Wu & Johnson 2021)
freeze                   BN -> FrozenBatchNorm (fixed affine map with the running statistics) for fine-tuning
fuse_bn                  fold eval-mode BN into the Conv/ConvTranspose/Linear layer before it
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from . import core, layers

# torch.nn class -> normlab class; constructor arguments are the same on both sides.
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: layers.BatchNorm1d,
    nn.BatchNorm2d: layers.BatchNorm2d,
    nn.BatchNorm3d: layers.BatchNorm3d,
    nn.GroupNorm: layers.GroupNorm,
    nn.LayerNorm: layers.LayerNorm,
    nn.InstanceNorm1d: layers.InstanceNorm1d,
    nn.InstanceNorm2d: layers.InstanceNorm2d,
    nn.InstanceNorm3d: layers.InstanceNorm3d,
    nn.SyncBatchNorm: layers.SyncBatchNorm,
    nn.RMSNorm: layers.RMSNorm,
}
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def _init_args(module: nn.Module) -> dict:
    if isinstance(module, nn.GroupNorm):
        args = dict(num_groups=module.num_groups, num_channels=module.num_channels, eps=module.eps,
                    affine=module.affine)
        if module.affine and module.bias is None:   # only then: older torch has no bias argument
            args["bias"] = False
        return args
    if isinstance(module, nn.RMSNorm):
        return dict(normalized_shape=module.normalized_shape, eps=module.eps,
                    elementwise_affine=module.elementwise_affine)
    if isinstance(module, nn.LayerNorm):
        return dict(normalized_shape=module.normalized_shape, eps=module.eps,
                    elementwise_affine=module.elementwise_affine, bias=module.bias is not None)
    args = dict(num_features=module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                track_running_stats=module.track_running_stats)
    if isinstance(module, nn.SyncBatchNorm):
        args["process_group"] = module.process_group
    if module.affine and module.bias is None:   # BN(bias=False): a learned scale without a shift
        args["bias"] = False
    return args


def _target(module: nn.Module, table: dict) -> type[nn.Module] | None:
    """The class `module` converts to, by convert()'s rule: its exact class in `table`, or the nearest class in
    `table` it inherits from when it keeps that class's forward (a subclass that only adds attributes)."""
    cls = type(module)
    if cls in table:
        return table[cls]
    for base in cls.__mro__[1:]:
        if base in table and cls.forward is base.forward:
            return table[base]
    return None


def _convert_one(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    ref = next(iter(module.state_dict().values()), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None and ref.is_floating_point() else {}
    new = cls(**_init_args(module), **factory)
    new.load_state_dict(module.state_dict())
    for name, param in new.named_parameters(recurse=False):
        param.requires_grad_(getattr(module, name).requires_grad)
    new.train(module.training)
    return new


def _unmapped(module: nn.Module, to: str) -> bool:
    """A norm layer convert() leaves as it is and warns about: torch.nn norms (to="normlab") or normlab norms
    (to="torch") whose class it cannot map."""
    from_normlab = type(module).__module__.startswith("normlab.")
    if to == "normlab":
        return isinstance(module, _NORMS) and not from_normlab
    return from_normlab and isinstance(module, (*_NORMS, layers.FrozenBatchNorm))


def _swap(module: nn.Module, table: dict, to: str, done: dict[int, nn.Module], skipped: dict[str, str],
          prefix: str = "") -> nn.Module:
    if id(module) in done:   # a module used twice stays one module (shared statistics and parameters)
        return done[id(module)]
    cls = _target(module, table)
    if cls is not None:
        new = _convert_one(module, cls)
    else:
        if _unmapped(module, to):
            skipped.setdefault(type(module).__qualname__, prefix or "<model>")
        for name, child in list(module._modules.items()):   # not named_children(): it skips a repeated module
            if child is not None:
                setattr(module, name, _swap(child, table, to, done, skipped, f"{prefix}.{name}" if prefix else name))
        new = module
    done[id(module)] = new
    return new


def convert(model: nn.Module, to: str = "normlab", inplace: bool = False) -> nn.Module:
    """Swap every torch.nn norm layer of `model` for its normlab twin (to="normlab") or back (to="torch").

    Rule (docs/dropin.md): a module converts when its class is one of TWINS' (BatchNorm1d/2d/3d, SyncBatchNorm,
    GroupNorm, LayerNorm, InstanceNorm1d/2d/3d, RMSNorm) or a subclass of one that keeps that class's forward (it only
    adds attributes; it becomes the twin class). Subclasses with their own forward (timm's BatchNormAct2d and
    LayerNorm2d, a user's BN with a custom forward) and normlab's variants, which have no twin, stay as they are,
    with one warning naming their classes. A module used twice stays one module. Weights, buffers, requires_grad and
    train/eval mode are kept; the model is copied first unless inplace=True.

    Examples::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        >>> ours = normlab.convert(model)
        >>> type(ours[1]).__module__, isinstance(ours[1], torch.nn.BatchNorm2d)
        ('normlab.layers.batchnorm', True)
        >>> x = torch.randn(2, 3, 6, 6)
        >>> torch.allclose(ours(x), model(x), atol=1e-5)
        True
        >>> type(normlab.convert(ours, to="torch")[1]) is torch.nn.BatchNorm2d
        True
    """
    if to not in ("normlab", "torch"):
        raise ValueError(f"to: expected 'normlab' or 'torch', got {to!r}")
    table = TWINS if to == "normlab" else {v: k for k, v in TWINS.items()}
    model = model if inplace else copy.deepcopy(model)
    skipped: dict[str, str] = {}
    out = _swap(model, table, to, {}, skipped)
    if skipped:
        names = ", ".join(f"{cls} (first at {where})" for cls, where in skipped.items())
        warnings.warn(f"convert(to={to!r}) left these norm layers unconverted (no twin, or a subclass with its own "
                      f"forward): {names}", UserWarning, stacklevel=2)
    return out


# ------------------------------------------------------------------------------------------------------ shared helpers
_TORCH_BN = nn.modules.batchnorm._BatchNorm
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_SYNCABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             layers.BatchNorm1d, layers.BatchNorm2d, layers.BatchNorm3d)


def _is_bn(module: nn.Module) -> bool:
    """A batch-statistics BN of torch or normlab (variants included; not Frozen, not InstanceNorm)."""
    return isinstance(module, (_TORCH_BN, layers.batchnorm._BatchNorm))


def _replace(module: nn.Module, fn, prefix: str = "") -> nn.Module:
    """Depth-first: fn(name, m) returns a replacement or None (then recurse into m's children)."""
    new = fn(prefix, module)
    if new is not None:
        return new
    for name, child in module.named_children():
        setattr(module, name, _replace(child, fn, f"{prefix}.{name}" if prefix else name))
    return module


def _name(name: str) -> str:
    return repr(name) if name else "the model itself"


def _eval_affine(name: str, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), float64 (C,): the eval transform of `bn` as y = a * x + b. Raises where BN has no such transform."""
    if isinstance(bn, layers.FrozenBatchNorm):
        a, b = bn.scale_shift()
        return a.double(), b.double()
    if bn.training:
        raise ValueError(f"{_name(name)}: BN in training mode normalizes with batch statistics; call model.eval() "
                         f"first so it uses its running statistics")
    if bn.running_mean is None:
        raise ValueError(f"{_name(name)}: BN has no running statistics (track_running_stats=False), so its eval "
                         f"output depends on the batch and is not a fixed affine map")
    # Lp BN (p in {1, inf}) keeps its running dispersion in running_var and is affine at eval too
    a = 1.0 / core.scale_from(bn.running_var.double(), bn.eps, getattr(bn, "p", 2.0))
    if bn.weight is not None:
        a = a * bn.weight.detach().double()
    b = -bn.running_mean.double() * a
    if bn.bias is not None:
        b = b + bn.bias.detach().double()
    return a, b


# ------------------------------------------------------------------------------------------------------------ SyncBN
def convert_sync_batchnorm(model: nn.Module, process_group=None, inplace: bool = False) -> nn.Module:
    """Swap every BatchNorm1d/2d/3d and nn.SyncBatchNorm (torch or normlab) for normlab SyncBatchNorm.

    Like torch.nn.SyncBatchNorm.convert_sync_batchnorm: weights, buffers, requires_grad and train/eval mode are kept.
    BN variants (renorm, ghost, noisy, Lp) are left alone. The model is copied first unless inplace=True.

    Examples::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        >>> type(normlab.tools.convert_sync_batchnorm(model)[1]).__name__
        'SyncBatchNorm'
    """
    def swap(_name: str, m: nn.Module) -> nn.Module | None:
        if type(m) not in _SYNCABLE:
            return None
        ref = m.running_mean if m.running_mean is not None else m.weight
        factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        new = layers.SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                   process_group, **factory, bias=m.bias is not None or not m.affine)
        new.load_state_dict(m.state_dict())
        for p, q in ((new.weight, m.weight), (new.bias, m.bias)):
            if p is not None:
                p.requires_grad_(q.requires_grad)
        return new.train(m.training)

    return _replace(model if inplace else copy.deepcopy(model), swap)


# --------------------------------------------------------------------------------------------------------- PreciseBN
def _first_tensor(batch) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) > 0 else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"data: expected batches that are tensors or (x, ...) tuples/lists, got {type(batch).__name__}")
    return x


class _Moments:
    """Running per-channel moments of one BN's inputs over the batches seen (float64), for precise_bn.

    n: values per channel so far; total: sum_b n_b mean_b; m2: sum of squared deviations from the running mean
    (pooled, combined as Chan et al.); var_sum: sum_b n_b * (unbiased var_b)."""

    def __init__(self) -> None:
        self.n, self.total, self.m2, self.var_sum = 0, 0.0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        """Add batch x (N, C, *) whose statistics are taken over every dim but 1."""
        dims = (0, *range(2, x.dim()))
        nb = core.count(x, dims)
        if nb == 0:
            return
        mean_b, var_b = (t.flatten() for t in core.statistics(x.double(), dims))
        n, mean = self.n, (self.total / self.n if self.n else 0.0)
        # Chan et al.: M2 of the union = M2 + M2_b + (mean_b - mean)^2 n nb / (n + nb)
        self.m2 = self.m2 + nb * var_b + (mean_b - mean) ** 2 * (n * nb / (n + nb))
        self.var_sum = self.var_sum + nb * var_b * (nb / (nb - 1) if nb > 1 else 1.0)
        self.n, self.total = n + nb, self.total + nb * mean_b

    def mean_var(self, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) per channel: var pooled-unbiased ("pooled") or the n_b-weighted mean of the unbiased batch
        variances ("batch-average")."""
        if self.n < 2:
            raise ValueError(f"data: a BN layer saw {self.n} value(s) per channel; need at least 2")
        var = self.m2 / (self.n - 1) if estimator == "pooled" else self.var_sum / self.n
        return self.total / self.n, var


def _precise_bn_layers(model: nn.Module, num_samples: int, estimator: str) -> list[nn.Module]:
    """The BN layers precise_bn recomputes; ValueError naming the argument for bad input."""
    if isinstance(num_samples, bool) or not (isinstance(num_samples, int) and num_samples > 0):
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    if estimator not in ("pooled", "batch-average"):
        raise ValueError(f"estimator: expected 'pooled' or 'batch-average', got {estimator!r}")
    bns = [m for m in model.modules() if _is_bn(m) and m.running_mean is not None]
    if not bns:
        raise ValueError("model: no BatchNorm layer with running statistics to recompute")
    lp = [type(m).__name__ for m in bns if getattr(m, "p", 2) != 2]
    if lp:
        raise ValueError(f"model: precise_bn recomputes mean and variance; Lp BN layers with p != 2 ({', '.join(lp)}) "
                         f"keep another dispersion in running_var")
    return bns


def _feed(model: nn.Module, bns: list[nn.Module], data, num_samples: int) -> int:
    """Run whole batches of `data` through the model (BN layers in train mode, the rest in eval mode) until
    num_samples samples are seen; returns that number."""
    device = next(iter(model.parameters()), bns[0].running_mean).device
    model.eval()
    for m in bns:
        m.train()
    seen = 0
    for batch in data:
        x = _first_tensor(batch)
        model(x.to(device))
        seen += x.shape[0]
        if seen >= num_samples:
            break
    if seen < num_samples:
        raise ValueError(f"num_samples: asked for {num_samples} samples but data gave only {seen}")
    return seen


@torch.no_grad()
def precise_bn(model: nn.Module, data, num_samples: int, estimator: str = "pooled") -> int:
    """Recompute every BN's running_mean / running_var from at least `num_samples` samples of `data`.

    Definition (Wu & Johnson 2021, as fvcore's update_bn_stats): the model runs forward with weights frozen, every BN
    in train mode (so each BN normalizes with its batch statistics and later BN layers see train-mode features), all
    other modules in eval mode. For each BN, with n_b values per channel, mean_b and biased var_b of its input in
    batch b (n_b = N_b x spatial), n = sum_b n_b:
      estimator="pooled" (default): the exact statistics of every value seen, mean = sum_b n_b mean_b / n and
          var = (sum_b n_b var_b + sum_b n_b (mean_b - mean)^2) / (n - 1)   (unbiased; combined as Chan et al.);
      estimator="batch-average": mean as above, var = sum_b n_b * var_b * n_b / (n_b - 1) / n, the n_b-weighted
          average of the unbiased batch variances (fvcore's equal-weight average when batches are equal-sized).
    data: an iterable of tensors or of (x, ...) tuples; whole batches are used until num_samples samples (dim 0) are
    seen. Parameters, num_batches_tracked and every module's train/eval mode are unchanged afterwards; on an error the
    running statistics are restored too. Returns the number of samples used. Per process (no all-reduce for SyncBN).

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), normlab.BatchNorm1d(3))
        >>> data = [torch.randn(16, 4) * 2 + 1 for _ in range(4)]
        >>> normlab.precise_bn(model, data, num_samples=64)   # samples used
        64
        >>> h = model[0](torch.cat(data)).detach()          # the exact statistics of the 64 inputs
        >>> torch.allclose(model[1].running_mean, h.mean(0), atol=1e-5)
        True
        >>> torch.allclose(model[1].running_var, h.var(0), atol=1e-5)
        True
    """
    bns = _precise_bn_layers(model, num_samples, estimator)
    modes = {m: m.training for m in model.modules()}
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns}
    moments = {m: _Moments() for m in bns}
    handles = [m.register_forward_pre_hook(lambda bn, args: moments[bn].add(args[0])) for m in bns]
    try:
        seen = _feed(model, bns, data, num_samples)
        for m in bns:
            mean, var = moments[m].mean_var(estimator)
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    except BaseException:
        for m, (mean, var, _) in saved.items():
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        raise
    finally:
        for h in handles:
            h.remove()
        for m, (_, _, nbt) in saved.items():
            m.num_batches_tracked.copy_(nbt)
        for m, training in modes.items():
            m.training = training
    return seen


# -------------------------------------------------------------------------------------------------------- Frozen BN
def freeze(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every BN (torch or normlab, SyncBN included) by a FrozenBatchNorm holding its running statistics.

    The frozen layer computes the BN's eval output in train and eval mode alike and has no parameters (gamma, beta
    become buffers), so fine-tuning moves only the other layers. The model is copied first unless inplace=True.

    Examples::

        >>> import torch, normlab
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
        >>> frozen = normlab.tools.freeze(model)
        >>> type(frozen[1]).__name__, sum(p.numel() for p in frozen[1].parameters())
        ('FrozenBatchNorm2d', 0)
        >>> x = torch.randn(2, 3, 6, 6)
        >>> torch.allclose(frozen.train()(x), model(x), atol=1e-6)   # the BN's eval output, in train mode too
        True
    """
    def swap(name: str, m: nn.Module) -> nn.Module | None:
        if not _is_bn(m):
            return None
        if m.running_mean is None:
            raise ValueError(f"{_name(name)}: BN has no running statistics (track_running_stats=False); "
                             f"nothing to freeze")
        if getattr(m, "p", 2) != 2:
            raise ValueError(f"{_name(name)}: Lp BN with p={m.p} has no frozen BN equivalent (only p=2)")
        ranks = getattr(m, "_ranks", None)
        cls = {(2, 3): layers.FrozenBatchNorm1d, (4,): layers.FrozenBatchNorm2d,
               (5,): layers.FrozenBatchNorm3d}.get(ranks, layers.FrozenBatchNorm)
        for torch_cls, frozen in ((nn.BatchNorm1d, layers.FrozenBatchNorm1d),
                                  (nn.BatchNorm2d, layers.FrozenBatchNorm2d),
                                  (nn.BatchNorm3d, layers.FrozenBatchNorm3d)):
            if isinstance(m, torch_cls):
                cls = frozen
        ref = m.running_mean
        new = cls(m.num_features, m.eps, m.affine, device=ref.device, dtype=ref.dtype,
                  bias=m.bias is not None or not m.affine)
        new.running_mean.copy_(m.running_mean)
        new.running_var.copy_(m.running_var)
        for p, q in ((new.weight, m.weight), (new.bias, m.bias)):
            if p is not None:
                p.copy_(q.detach())
        return new.train(m.training)

    with torch.no_grad():
        return _replace(model if inplace else copy.deepcopy(model), swap)


# ------------------------------------------------------------------------------------------------------- BN folding
def _fold(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
    """layer <- a * layer + b per output channel: W' = W a (out-channel axis), b' = b0 a + b (b0 = 0 if no bias)."""
    w = layer.weight
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        # weight (in, out / groups, *k): output channel o = group * (out / groups) + j sits at [group rows, j]
        g = layer.groups
        wg = w.detach().double().reshape(g, w.shape[0] // g, *w.shape[1:])
        new_w = (wg * a.view(g, 1, -1, *[1] * (w.dim() - 2))).reshape(w.shape)
    else:  # Conv (out, in / groups, *k) and Linear (out, in): output channels on dim 0
        new_w = w.detach().double() * a.view(-1, *[1] * (w.dim() - 1))
    b0 = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(a)
    # new Parameters rather than in-place copies: a weight tied to another layer's keeps its value there
    layer.weight = nn.Parameter(new_w.to(w.dtype), requires_grad=w.requires_grad)
    layer.bias = nn.Parameter((b0 * a + b).to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad)


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def fuse_bn(model: nn.Module, strict: bool = True, pairs: list[tuple[str, str]] | None = None) -> nn.Module:
    """A copy of `model` with every eval-mode BN folded into the layer that produces its input; the BN becomes
    nn.Identity. At eval, BN(layer(x)) = a * layer(x) + b per channel (Ioffe & Szegedy Sec. 3.1) with
    a = gamma / sqrt(running_var + eps), b = beta - running_mean * a, so W' = a W along the output-channel axis
    (dim 0 for Conv and Linear, dim 1 within each group for ConvTranspose) and b' = a b0 + b.

    "Follows" means: the BN comes right after a Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear (exact classes, so
    subclasses with their own forward such as weight-standardized convs are never folded) in the same nn.Sequential,
    or the pair is named in `pairs` as (layer_name, bn_name) from model.named_modules() (for blocks that call
    self.conv then self.bn in forward; you vouch that nothing else reads the layer's output). Linear -> BN assumes
    (N, features) input. BN here: torch or normlab BatchNorm*d / SyncBatchNorm, the normlab variants (whose eval
    transform is BN's; Lp BN with a = gamma / (running dispersion + eps) for p in {1, inf}), and FrozenBatchNorm.

    Raises ValueError for a BN in training mode or without running statistics, and (strict=True, the default) for a
    BN that follows no foldable layer; strict=False leaves such BNs in place.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), normlab.BatchNorm2d(4), torch.nn.ReLU())
        >>> _ = model(torch.randn(8, 3, 6, 6) * 2)   # some running statistics
        >>> model = model.eval()
        >>> fused = normlab.fuse_bn(model)
        >>> type(fused[1]).__name__
        'Identity'
        >>> x = torch.randn(2, 3, 6, 6)
        >>> torch.allclose(fused(x), model(x), atol=1e-5)
        True
    """
    model = copy.deepcopy(model)   # deepcopy keeps the sharing: a module used twice is one object in the copy
    is_norm = lambda m: _is_bn(m) or isinstance(m, layers.FrozenBatchNorm)   # noqa: E731
    for name, m in model.named_modules():
        if _is_bn(m) and m.training:
            raise ValueError(f"{_name(name)}: BN in training mode normalizes with batch statistics; call "
                             f"model.eval() before fuse_bn")
    slots, where = _slots(model)
    folds = _fold_plan(model, slots, where, pairs or [], is_norm)
    folded = {(id(bp), ba) for _, _, bp, ba, _, _ in folds}
    loose = [path for path, parent, attr in slots
             if is_norm(parent._modules[attr]) and (id(parent), attr) not in folded]
    if strict and loose:
        raise ValueError(f"fuse_bn: BN layer(s) {', '.join(map(_name, loose))} do not directly follow a Conv, "
                         f"ConvTranspose or Linear in an nn.Sequential (nor appear in pairs=); pass strict=False to "
                         f"leave them unfused")
    for lp, la, _, _, _, _ in folds:
        layer = lp._modules[la]
        if len(where[id(layer)]) > 1:   # a layer used in several places: this place gets its own (unfused) copy
            setattr(lp, la, copy.deepcopy(layer))
    for lp, la, bp, ba, layer_path, bn_path in folds:
        layer, bn = lp._modules[la], bp._modules[ba]
        if _out_channels(layer) != bn.num_features:
            raise ValueError(f"{_name(bn_path)}: num_features={bn.num_features} but {layer_path!r} has "
                             f"{_out_channels(layer)} output channels")
        a, b = _eval_affine(bn_path, bn)
        _fold(layer, a.to(layer.weight.device), b.to(layer.weight.device))
        setattr(bp, ba, nn.Identity())   # this place only: a BN used elsewhere too stays there
    return model


def _slots(model: nn.Module) -> tuple[list[tuple[str, nn.Module, str]], dict[int, list[str]]]:
    """Every place a module sits in the tree, shared modules included: [(path, parent, attribute)], and per module
    id the paths of all its places. (named_modules() lists a shared module once, under its first name.) The children
    of a shared container are listed once: they are the same places whichever way the container is reached."""
    slots: list[tuple[str, nn.Module, str]] = []
    where: dict[int, list[str]] = {}
    seen: set[int] = set()

    def walk(prefix: str, module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for attr, child in module._modules.items():
            if child is None:
                continue
            path = f"{prefix}.{attr}" if prefix else attr
            slots.append((path, module, attr))
            where.setdefault(id(child), []).append(path)
            walk(path, child)
    walk("", model)
    return slots, where


def _fold_plan(model: nn.Module, slots: list, where: dict, pairs: list, is_norm) -> list[tuple]:
    """[(layer_parent, layer_attr, bn_parent, bn_attr, layer_path, bn_path)]: the Sequential neighbours (layer, BN)
    and the named pairs, once each. A named pair's layer must be used in one place only: the forward that calls it by name would
    read the folded layer everywhere it is used."""
    plan: list[tuple] = []
    taken: set[tuple[int, str]] = set()
    parents = {id(p): (p, path.rpartition(".")[0]) for path, p, _ in slots}
    parents.setdefault(id(model), (model, ""))
    for seq, prefix in parents.values():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = [(a, m) for a, m in seq._modules.items() if m is not None]
        for (la, layer), (ba, bn) in zip(kids, kids[1:]):
            if type(layer) in _FOLDABLE and is_norm(bn) and (id(seq), ba) not in taken:
                taken.add((id(seq), ba))
                plan.append((seq, la, seq, ba, f"{prefix}.{la}" if prefix else la, f"{prefix}.{ba}" if prefix else ba))
    for ln, bn_name in pairs:
        found = []
        for n in (ln, bn_name):
            parent_name, _, attr = n.rpartition(".")
            try:
                parent = model.get_submodule(parent_name)
                found.append((parent, attr, parent._modules[attr]))
            except (AttributeError, KeyError):
                raise ValueError(f"pairs: no module named {n!r} in the model") from None
        (lp, la, layer), (bp, ba, bn) = found
        if type(layer) not in _FOLDABLE or not is_norm(bn):
            raise ValueError(f"pairs: ({ln!r}, {bn_name!r}) is not (Conv/ConvTranspose/Linear, BN): got "
                             f"({type(layer).__name__}, {type(bn).__name__})")
        if len(where[id(layer)]) > 1:
            raise ValueError(f"pairs: {ln!r} is one module used in {len(where[id(layer)])} places "
                             f"({', '.join(where[id(layer)])}); folding it would change every place; give each "
                             f"place its own layer (copy.deepcopy) before fuse_bn")
        if (id(bp), ba) not in taken:
            taken.add((id(bp), ba))
            plan.append((lp, la, bp, ba, ln, bn_name))
    return plan
