"""SyncBatchNorm: BN statistics over the global batch of every process in a torch.distributed group (SPEC §1.3).

Forward (training, world size > 1): each rank computes its per-channel (count, mean, biased var) with the core, the
ranks all-gather them, and every rank combines them with the parallel-variance rule (Chan et al. 1979)

    n = sum n_r,   mean = sum n_r mean_r / n,   var = (sum n_r var_r + sum n_r (mean_r - mean)^2) / n,

which never subtracts two large sums of squares. Backward all-reduces the two cross-sample sums sum(g) and
sum(g * xhat) and hands them, with the global count m, to core.backward_from_sums. Ranks may hold different batch
sizes (even 0). Before any per-channel collective the ranks exchange num_features, so a mismatch raises ValueError
on every rank instead of hanging.

Double backward works through the synchronized path: when the backward runs under create_graph, it rebuilds the
global statistics from x with a differentiable all-reduce (whose backward is itself an all-reduce), so the second
derivative includes the cross-rank terms. torch.nn.SyncBatchNorm raises in this case.

Falls back to plain BatchNorm (the parent's _normalize) in eval mode, when torch.distributed is not initialized or
when the group has one process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import core
from .batchnorm import _BatchNorm

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum all-reduce: y = sum_r x_r on every rank; dL/dx_r = sum_s dL/dy_s (another all-reduce)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group):
        ctx.group = group
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return _AllReduceSum.apply(g, ctx.group), None


def _exchange_counts(num_features: int, m: int, device: torch.device, group) -> list[int]:
    """All-gather (num_features, m) from every rank; raise on every rank if num_features differ. Returns the m's."""
    world = dist.get_world_size(group)
    mine = torch.tensor([num_features, m], dtype=torch.float64, device=device)
    got = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(got, mine, group=group)
    channels = [int(t[0]) for t in got]
    if len(set(channels)) != 1:
        raise ValueError(f"SyncBatchNorm: num_features differs across the process group (rank -> num_features: "
                         f"{dict(enumerate(channels))}); every rank must normalize the same channels")
    return [int(t[1]) for t in got]


def _global_stats(x32: torch.Tensor, dims: tuple[int, ...], counts: list[int], group):
    """(mean, biased var) of the union of every rank's batch, float64 (C,), by Chan's pairwise combination."""
    c = x32.shape[1]
    if x32.numel() > 0:
        mean, var = core.statistics(x32, dims)
        mean64 = mean.double()
        if x32.dtype != torch.float64:
            # a float32 mean of values near 1e4 is rounded by ~5e-4, which the (mean_r - mean)^2 term below would
            # turn into a relative error of that size in var; the mean of the residuals restores those digits
            mean64 = mean64 + (x32 - mean).mean(dim=dims, keepdim=True).double()
        local = torch.stack([mean64.flatten(), var.double().flatten()])
    else:  # this rank has no samples: weight 0 in the combination
        local = x32.new_zeros(2, c, dtype=torch.float64)
    got = [torch.empty_like(local) for _ in counts]
    dist.all_gather(got, local, group=group)
    stats = torch.stack(got)                                    # (world, 2, C)
    n = torch.tensor(counts, dtype=torch.float64, device=x32.device).view(-1, 1)
    total = n.sum()
    mean = (n * stats[:, 0]).sum(0) / total
    m2 = (n * stats[:, 1]).sum(0) + (n * (stats[:, 0] - mean) ** 2).sum(0)
    return mean, m2 / total


def _differentiable_stats(x32: torch.Tensor, shift: torch.Tensor, dims: tuple[int, ...], m: int, group):
    """Global (mean, biased var) as differentiable functions of every rank's x (two passes, around the mean).

    shift: the forward's global mean (a constant); summing x - shift keeps large offsets from rounding the mean.
    """
    mean = shift + _AllReduceSum.apply((x32 - shift).sum(dim=dims, keepdim=True), group) / m
    var = _AllReduceSum.apply(((x32 - mean) ** 2).sum(dim=dims, keepdim=True), group) / m
    return mean, var


class SyncNormalizeFn(torch.autograd.Function):
    """xhat, mean, var, m = SyncNormalizeFn.apply(x, eps, group, num_features): Alg. 1's transform with the
    statistics of the whole group's batch.

    x: (N_r, C, *) on rank r (N_r may differ between ranks). mean, var: (C,) global batch statistics (var biased,
    no gradient); m: the global number of values per channel.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float, group, num_features: int):
        dims = (0, *range(2, x.dim()))
        shape = core.channel_shape(x.dim())
        x32 = x.float() if x.dtype in _LOW_PRECISION else x
        counts = _exchange_counts(num_features, core.count(x, dims), x.device, group)
        m = sum(counts)
        if m <= 1:
            raise ValueError(f"input: expected more than 1 value per channel over the whole process group when "
                             f"training, got {m} (per-rank counts {counts})")
        mean, var = (t.to(x32.dtype) for t in _global_stats(x32, dims, counts, group))
        xhat = core.normalize_with(x32, mean.view(shape), var.view(shape), eps).to(x.dtype)
        ctx.save_for_backward(x, mean.view(shape), core.scale_from(var.view(shape), eps))
        ctx.dims, ctx.eps, ctx.group, ctx.m = dims, eps, group, m
        ctx.mark_non_differentiable(mean, var)
        return xhat, mean, var, m

    @staticmethod
    def backward(ctx, g: torch.Tensor, _gmean, _gvar, _gm):
        x, mean, s = ctx.saved_tensors
        dims, group, m = ctx.dims, ctx.group, ctx.m
        x32 = x.float() if x.dtype in _LOW_PRECISION else x
        g32 = g.float() if g.dtype in _LOW_PRECISION else g
        if torch.is_grad_enabled():
            # double backward: the statistics and the two sums as differentiable functions of every rank's x and g
            mean, var = _differentiable_stats(x32, mean, dims, m, group)
            s = core.scale_from(var, ctx.eps)
            xhat = (x32 - mean) / s
            sum_g = _AllReduceSum.apply(g32.sum(dim=dims, keepdim=True), group)
            sum_gx = _AllReduceSum.apply((g32 * xhat).sum(dim=dims, keepdim=True), group)
        else:
            xhat = (x32 - mean) / s
            sums = torch.stack([g32.sum(dim=dims), (g32 * xhat).sum(dim=dims)])   # one collective for both
            dist.all_reduce(sums, group=group)
            shape = core.channel_shape(x.dim())
            sum_g, sum_gx = sums[0].view(shape), sums[1].view(shape)
        dx = core.backward_from_sums(g32, xhat, s, sum_g, sum_gx, m)
        return dx.to(x.dtype), None, None, None


class SyncBatchNorm(_BatchNorm, nn.SyncBatchNorm):
    r"""BatchNorm over (N, C, *) input of any rank >= 2 with statistics over every process of `process_group`.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta,\quad
              \mathrm{E}, \mathrm{Var} \text{ over the global batch of all ranks}

    Parameter gradients are each rank's own contribution (sum over its samples); summing them over ranks, which DDP
    does up to its 1/world average, gives the gradient of the global batch. Running statistics come from the global
    batch (variance unbiased with the global count), identical on every rank. Outside an initialized process group
    (or in eval mode) it is exactly :class:`BatchNorm2d`'s math. A ``torch.nn.SyncBatchNorm``.

    Args:
        num_features, eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d`.
        process_group: the ranks whose statistics are pooled (None: the default group).

    Shape:
        - Input: (N, C, *) of any rank >= 2
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(4, 3, 5) * 2 + 1
        >>> y = normlab.SyncBatchNorm(3)(x).detach()   # one process: BN of the local batch
        >>> tuple(y.shape), torch.allclose(y, torch.nn.BatchNorm1d(3)(x), atol=1e-5)
        ((4, 3, 5), True)
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    _ranks = None   # any rank >= 2
    fuse_affine = False

    def _plain(self, x: torch.Tensor) -> bool:
        return not self._synchronized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._synchronized():   # plain BN: traceable by FX, torch.compile and export
            return self._bn(x, self.weight, self.bias)
        return super().forward(x)

    def _synchronized(self) -> bool:
        return (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self._synchronized():
            return super()._normalize(x)
        if x.dim() < 2:
            raise ValueError(f"input: SyncBatchNorm expects a tensor (N, C, ...) of at least 2 dimensions, "
                             f"got {x.dim()}D input of shape {tuple(x.shape)}")
        xhat, mean, var, m = SyncNormalizeFn.apply(x, self.eps, self.process_group, self.num_features)
        if self.track_running_stats:
            self._update_running(mean, var, m, self._tick())
        return xhat
