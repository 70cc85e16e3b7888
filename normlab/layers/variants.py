"""BatchNorm variants on normlab's core (SPEC §1.3, docs/variants.md): noisy BN, Lp BN and Ghost BN, 1d and 2d.

    Noisy BN  (Santurkar et al. 2018, App. A.2.1)  y = s * BN(x) + m, fresh noise every training step
    Lp BN     (Santurkar et al. 2018, Sec. 3.3)    xhat = (x - mean_B) / s_p,  s_p = (mean_B |x - mean_B|^p + eps)^(1/p)
    Ghost BN  (Hoffer et al. 2017, Alg. 1)         BN statistics per virtual batch of `virtual_batch_size` samples

All three are _BatchNorm subclasses with BN's parameters, buffers and state_dict keys; the normalization itself is
core.normalize (hand-written backward), never a copy of it. Batch Renorm lives in renorm.py.
"""
from __future__ import annotations

import math

import torch

from .. import core
from . import functional as F
from .batchnorm import _BatchNorm

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _batch_dims(x: torch.Tensor) -> tuple[int, ...]:
    """BN's statistic axes: batch and every spatial axis (Ioffe & Szegedy Sec. 3.2)."""
    return (0, *range(2, x.dim()))


def _check_count(x: torch.Tensor, m: int) -> None:
    """As BatchNorm: one value per channel cannot be normalized by batch statistics."""
    if m <= 1:
        raise ValueError(f"input: expected more than 1 value per channel when normalizing with batch statistics "
                         f"(training, or track_running_stats=False), got input of shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------------------- noisy BN
class _NoisyBatchNorm(_BatchNorm):
    """BN, then (training only) a_ij -> s_ij * a_ij + m_ij (Santurkar et al. App. A.2.1).

    Every training forward, per channel j: mu_j ~ U(-n_mu, n_mu), sigma_j ~ U(1, n_sigma); per value (i, j):
    m_ij ~ U(mu_j - r_mu, mu_j + r_mu), s_ij ~ N(sigma_j, r_sigma) (r_sigma is a standard deviation).
    For (N, C, L) and (N, C, H, W) inputs i runs over samples *and* positions (BN's own conv convention, m' = N*H*W
    values per unit), so every activation gets its own m_ij, s_ij while mu_j, sigma_j are shared by the channel.
    The noise acts on the layer's output (after gamma, beta) and is a constant for autograd. Eval: plain BN.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, n_mu: float = 0.5, n_sigma: float = 1.25, r_mu: float = 0.1,
                 r_sigma: float = 0.1, generator: torch.Generator | None = None, device=None, dtype=None,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        for name, value, low in (("n_mu", n_mu, 0.0), ("n_sigma", n_sigma, 1.0), ("r_mu", r_mu, 0.0),
                                 ("r_sigma", r_sigma, 0.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
                raise ValueError(f"{name}: expected a finite float >= {low:g}, got {value!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = float(n_mu), float(n_sigma), float(r_mu), float(r_sigma)
        self.generator = generator

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", n_mu={self.n_mu}, n_sigma={self.n_sigma}, r_mu={self.r_mu}, "
                f"r_sigma={self.r_sigma}")

    def sample_noise(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, m), each shaped like `like` (N, C, *): one step's multiplicative and additive noise."""
        dtype = torch.float32 if like.dtype in _LOW_PRECISION else like.dtype
        kw = {"generator": self.generator, "device": like.device, "dtype": dtype}
        c, shape = like.shape[1], core.channel_shape(like.dim())
        mu = ((torch.rand(c, **kw) * 2 - 1) * self.n_mu).view(shape)
        sigma = (1 + torch.rand(c, **kw) * (self.n_sigma - 1)).view(shape)
        m = mu + (torch.rand(like.shape, **kw) * 2 - 1) * self.r_mu
        s = sigma + torch.randn(like.shape, **kw) * self.r_sigma
        return s, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaf = F.fx_leaf(self, x)
        if leaf is not None:
            return leaf
        y = super().forward(x)
        if not self.training:
            return y
        s, m = self.sample_noise(y)
        return torch.addcmul(m, s, y.to(s.dtype)).to(y.dtype)


class NoisyBatchNorm1d(_NoisyBatchNorm):
    r"""Noisy BN (Santurkar et al. 2018, Sec. 2.1 and App. A.2.1): BN, then distributional noise in training.

    .. math:: y_{ij} = s_{ij} \, \mathrm{BN}(x)_{ij} + m_{ij},\quad m_{ij} \sim U(\mu_j \pm r_\mu),\;
              s_{ij} \sim N(\sigma_j, r_\sigma^2),\; \mu_j \sim U(-n_\mu, n_\mu),\; \sigma_j \sim U(1, n_\sigma)

    Fresh noise every training forward (j: channel, i: sample and position); a constant for autograd. Eval: plain BN.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).
        n_mu, n_sigma, r_mu, r_sigma: the noise parameters above (keyword-only; defaults the paper's 0.5, 1.25, 0.1,
            0.1).
        generator: the torch.Generator the noise is drawn from (None: the global one). Keyword-only.

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> layer, x = normlab.NoisyBatchNorm1d(3), torch.randn(8, 3)
        >>> y = layer(x).detach()
        >>> tuple(y.shape), torch.allclose(y, torch.nn.BatchNorm1d(3)(x), atol=1e-5)  # noise
        ((8, 3), False)
        >>> _ = layer.eval()   # eval: BN with the running statistics, no noise
        >>> torch.equal(layer(x), layer(x))
        True
    """
    _ranks = (2, 3)


class NoisyBatchNorm2d(_NoisyBatchNorm):
    r"""Noisy BN (Santurkar et al. 2018, Sec. 2.1 and App. A.2.1): BN, then distributional noise in training.

    .. math:: y_{ij} = s_{ij} \, \mathrm{BN}(x)_{ij} + m_{ij},\quad m_{ij} \sim U(\mu_j \pm r_\mu),\;
              s_{ij} \sim N(\sigma_j, r_\sigma^2),\; \mu_j \sim U(-n_\mu, n_\mu),\; \sigma_j \sim U(1, n_\sigma)

    Fresh noise every training forward (j: channel, i: sample and position); a constant for autograd. Eval: plain BN.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).
        n_mu, n_sigma, r_mu, r_sigma: the noise parameters above (keyword-only; defaults the paper's 0.5, 1.25, 0.1,
            0.1).
        generator: the torch.Generator the noise is drawn from (None: the global one). Keyword-only.

    Shape:
        - Input: (N, C, H, W)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> layer, x = normlab.NoisyBatchNorm2d(3), torch.randn(4, 3, 2, 2)
        >>> y = layer(x).detach()
        >>> tuple(y.shape), torch.allclose(y, torch.nn.BatchNorm2d(3)(x), atol=1e-5)  # noise
        ((4, 3, 2, 2), False)
        >>> _ = layer.eval()   # eval: BN with the running statistics, no noise
        >>> torch.equal(layer(x), layer(x))
        True
    """
    _ranks = (4,)


# ------------------------------------------------------------------------------------------------------------- Lp BN
class _LpBatchNorm(_BatchNorm):
    """Center by the batch mean, divide by the batch lp statistic of the centered values, then gamma, beta.

    s = sqrt(mean|c|^2 + eps) (p = 2, BN), mean|c| + eps (p = 1), max|c| + eps (p = inf), c = x - mean_B, statistics
    per channel over batch and positions. Running statistics: `running_var` holds the running *dispersion*
    (unbiased variance for p = 2, the batch mean absolute deviation for p = 1, the batch max absolute deviation for
    p = inf; no Bessel factor for p != 2), so eval computes (x - running_mean) / scale_from(running_var, eps, p).
    """

    fuse_affine = False

    def __init__(self, num_features: int, p: float, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.p = core.check_p(p)

    def extra_repr(self) -> str:
        return f"{self.num_features}, p={self.p:g}, " + super().extra_repr().split(", ", 1)[1]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        dims, shape = _batch_dims(x), core.channel_shape(x.dim())
        if not self._use_batch_stats():
            return core.normalize_with(x, self.running_mean.view(shape), self.running_var.view(shape), self.eps,
                                       self.p)
        m = core.count(x, dims)
        _check_count(x, m)
        xhat, mean, disp = core.normalize(x, dims, self.eps, self.p)
        if self.training and self.track_running_stats:
            # m = 1 tells the shared EMA to skip Bessel's m/(m-1), which is a variance correction only
            self._update_running(mean.flatten(), disp.flatten(), m if self.p == 2 else 1, self._tick())
        return xhat


class LpBatchNorm1d(_LpBatchNorm):
    r"""Lp batch normalization (Santurkar et al. 2018, Sec. 3.3): center by the batch mean, divide by the lp
    dispersion of the centered values c = x - E[x] (per channel over the batch and positions).

    .. math:: y = \frac{c}{s_p} \gamma + \beta,\quad s_1 = \mathrm{E}|c| + \epsilon,\;
              s_2 = \sqrt{\mathrm{E}[c^2] + \epsilon} \;(\text{BN}),\; s_\infty = \max|c| + \epsilon

    ``running_var`` holds the running dispersion (the unbiased variance for p = 2, E|c| for p = 1, max|c| for
    p = inf); eval normalizes with it.

    Args:
        num_features: C, the number of channels.
        p: 1, 2 or ``math.inf``.
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input.

    Examples::

        >>> import math, torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(16, 3) * 3
        >>> y = normlab.LpBatchNorm1d(3, p=1)(x).detach()
        >>> dims = [d for d in range(x.dim()) if d != 1]
        >>> [round(float(v), 3) for v in y.abs().mean(dims)]   # unit mean absolute value per channel
        [1.0, 1.0, 1.0]
        >>> y = normlab.LpBatchNorm1d(3, p=math.inf)(x).detach()
        >>> [round(float(v), 3) for v in y.abs().amax(dims)]   # unit max absolute value per channel
        [1.0, 1.0, 1.0]
    """
    _ranks = (2, 3)


class LpBatchNorm2d(_LpBatchNorm):
    r"""Lp batch normalization (Santurkar et al. 2018, Sec. 3.3): center by the batch mean, divide by the lp
    dispersion of the centered values c = x - E[x] (per channel over the batch and positions).

    .. math:: y = \frac{c}{s_p} \gamma + \beta,\quad s_1 = \mathrm{E}|c| + \epsilon,\;
              s_2 = \sqrt{\mathrm{E}[c^2] + \epsilon} \;(\text{BN}),\; s_\infty = \max|c| + \epsilon

    ``running_var`` holds the running dispersion (the unbiased variance for p = 2, E|c| for p = 1, max|c| for
    p = inf); eval normalizes with it.

    Args:
        num_features: C, the number of channels.
        p: 1, 2 or ``math.inf``.
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).

    Shape:
        - Input: (N, C, H, W)
        - Output: same shape as the input.

    Examples::

        >>> import math, torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(4, 3, 3, 3) * 3
        >>> y = normlab.LpBatchNorm2d(3, p=1)(x).detach()
        >>> dims = [d for d in range(x.dim()) if d != 1]
        >>> [round(float(v), 3) for v in y.abs().mean(dims)]   # unit mean absolute value per channel
        [1.0, 1.0, 1.0]
        >>> y = normlab.LpBatchNorm2d(3, p=math.inf)(x).detach()
        >>> [round(float(v), 3) for v in y.abs().amax(dims)]   # unit max absolute value per channel
        [1.0, 1.0, 1.0]
    """
    _ranks = (4,)


# ---------------------------------------------------------------------------------------------------------- Ghost BN
class _GhostBatchNorm(_BatchNorm):
    """BN whose training statistics come from virtual batches of `virtual_batch_size` samples (Hoffer et al. Alg. 1).

    The batch (N, C, *) is cut in order into floor(N / v) virtual batches of v samples, normalized together by one
    core call on the view (k, v, C, *) over dims (1, 3, ...). A remainder of N mod v samples is a last, smaller
    virtual batch normalized on its own (a second core call); if it would hold a single value per channel, which BN
    cannot normalize, it joins the last full virtual batch instead. gamma, beta are shared. Running statistics: one
    EMA update per virtual batch, in batch order, and num_batches_tracked counts virtual batches (so momentum=None
    averages all virtual batches equally). v >= N is exactly BatchNorm. Eval uses the running statistics.
    """

    fuse_affine = False

    def __init__(self, num_features: int, virtual_batch_size: int, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.virtual_batch_size = F.positive_int(virtual_batch_size, "virtual_batch_size")

    def extra_repr(self) -> str:
        return (f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}, "
                + super().extra_repr().split(", ", 1)[1])

    def split(self, n: int, per_sample: int = 1) -> tuple[int, int]:
        """(k, tail): k full virtual batches of v samples, then one virtual batch of `tail` samples (0: none)."""
        v = self.virtual_batch_size
        if v >= n:
            return 0, n
        k, rem = divmod(n, v)
        if 0 < rem * per_sample <= 1:
            return k - 1, v + rem
        return k, rem

    def _plain(self, x: torch.Tensor) -> bool:
        return not self._use_batch_stats() or self.virtual_batch_size >= x.shape[0]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        # ints, not jit.trace's traced sizes: the split into virtual batches is fixed for a traced shape
        n, v = int(x.shape[0]), self.virtual_batch_size
        if self._plain(x):
            return _BatchNorm._normalize(self, x)
        per_sample = 1
        for size in x.shape[2:]:   # a loop: Dynamo does not trace math.prod over a generator
            per_sample *= int(size)
        if v * per_sample <= 1:
            raise ValueError(f"virtual_batch_size: {v} sample(s) per virtual batch leave 1 value per channel on "
                             f"input of shape {tuple(x.shape)}; batch statistics need more than 1")
        k, tail = self.split(n, per_sample)
        parts, stats = [], []
        if k:
            head = x[:k * v].reshape(k, v, *x.shape[1:])
            xh, mean, var = core.normalize(head, (1, *range(3, head.dim())), self.eps)
            parts.append(xh.reshape(k * v, *x.shape[1:]))
            stats += [(mean[i].flatten(), var[i].flatten(), v * per_sample) for i in range(k)]
        if tail:
            xh, mean, var = core.normalize(x[k * v:], _batch_dims(x), self.eps)
            parts.append(xh)
            stats.append((mean.flatten(), var.flatten(), tail * per_sample))
        if self.training and self.track_running_stats:
            for mean, var, m in stats:   # sequential, in batch order: the last virtual batch weighs most
                self._update_running(mean, var, m, self._tick())
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class GhostBatchNorm1d(_GhostBatchNorm):
    r"""Ghost Batch Normalization (Hoffer et al. 2017, Alg. 1): BN whose training statistics come from virtual
    batches of ``virtual_batch_size`` samples.

    .. math:: y_b = \frac{x_b - \mathrm{E}[x_b]}{\sqrt{\mathrm{Var}[x_b] + \epsilon}} \gamma + \beta
              \quad\text{for each virtual batch } b

    The batch is cut in order into virtual batches (a smaller remainder is its own, or joins the last one when it
    would hold a single value per channel); gamma, beta are shared; one running-statistics update per virtual batch.
    ``virtual_batch_size >= N`` is exactly BN; eval uses the running statistics.

    Args:
        num_features: C, the number of channels.
        virtual_batch_size: samples per virtual batch (a positive int).
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(8, 3)
        >>> y = normlab.GhostBatchNorm1d(3, virtual_batch_size=4)(x).detach()
        >>> torch.allclose(y[:4], torch.nn.BatchNorm1d(3)(x[:4]), atol=1e-5)   # each half is BN of its own 4 samples
        True
        >>> torch.allclose(y[4:], torch.nn.BatchNorm1d(3)(x[4:]), atol=1e-5)
        True
    """
    _ranks = (2, 3)


class GhostBatchNorm2d(_GhostBatchNorm):
    r"""Ghost Batch Normalization (Hoffer et al. 2017, Alg. 1): BN whose training statistics come from virtual
    batches of ``virtual_batch_size`` samples.

    .. math:: y_b = \frac{x_b - \mathrm{E}[x_b]}{\sqrt{\mathrm{Var}[x_b] + \epsilon}} \gamma + \beta
              \quad\text{for each virtual batch } b

    The batch is cut in order into virtual batches (a smaller remainder is its own, or joins the last one when it
    would hold a single value per channel); gamma, beta are shared; one running-statistics update per virtual batch.
    ``virtual_batch_size >= N`` is exactly BN; eval uses the running statistics.

    Args:
        num_features: C, the number of channels.
        virtual_batch_size: samples per virtual batch (a positive int).
        eps, momentum, affine, track_running_stats, bias: as :class:`BatchNorm2d` (defaults 1e-5, 0.1, True, True,
            True).

    Shape:
        - Input: (N, C, H, W)
        - Output: same shape as the input.

    Examples::

        >>> import torch, normlab
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(8, 3, 2, 2)
        >>> y = normlab.GhostBatchNorm2d(3, virtual_batch_size=4)(x).detach()
        >>> torch.allclose(y[:4], torch.nn.BatchNorm2d(3)(x[:4]), atol=1e-5)   # each half is BN of its own 4 samples
        True
        >>> torch.allclose(y[4:], torch.nn.BatchNorm2d(3)(x[4:]), atol=1e-5)
        True
    """
    _ranks = (4,)
