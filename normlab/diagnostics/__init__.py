"""The instruments of Santurkar et al. (2018) and Ioffe & Szegedy (2015) on any nn.Module (docs/diagnostics.md).

Functions of (model, loss_fn, x, y[, optimizer, lr]) that return plain rows, never train and never change the model,
its buffers, its .grad, the optimizer or the global RNG stream; and hook classes wrapping them for normlab.train.

    distributions / DistributionTracker   per-unit percentiles, mean, variance, histograms, step-to-step change
    ics                                   internal covariate shift, Definition 2.1 (||G - G'||, cos)
    landscape                             loss and gradient along -g: range, predictiveness, effective beta
    top_eigenvalue / hessian_trace        power iteration / Hutchinson on Hessian-vector products
    spectrum: HessianOperator, lanczos,   Hessian / Gauss-Newton / empirical Fisher (batch or loader, parameter
      slq_density, hutchpp_trace          subset): top/bottom-k eigenpairs, spectral density, Hutch++ trace
    landscape2d: surface, directions      1-D/2-D loss slices (filter-normalized random, gradient, two checkpoints)
    theorem41                             both sides of Theorem 4.1 per BN layer, shrink factors
"""
from .bound import bn_layers, theorem41
from .common import resolve_layers, stochastic_layers, weight_layers
from .distributions import DEFAULT_PERCENTILES, DistributionTracker, distributions, unit_percentiles
from .hessian import HessianOperator, hessian_trace, top_eigenvalue
from .hooks import (HOOKS, BoundHook, DistributionsHook, HessianHook, ICSHook, LandscapeHook, SpectrumHook,
                    build_hook)
from .ics import ics, simulate_step
from .instrument import INSTRUMENTS, Context, Instrument, Options, diagnosable
from .landscape import SPAN_LINEAR, SPAN_VGG, landscape, multipliers_for
from .landscape2d import (BN_MODES, Direction, checkpoint_direction, filter_normalize, gradient_direction,
                          interpolate, random_direction, surface)
from .spectrum import (KINDS, collect_batches, density_on_grid, hutchpp_trace, lanczos, power_iteration,
                       select_params, hessian_spectrum, slq_density)
from .summary import diagnose, format_table, parse_what

__all__ = ["distributions", "DistributionTracker", "unit_percentiles", "DEFAULT_PERCENTILES", "ics", "simulate_step",
           "landscape", "multipliers_for", "SPAN_VGG", "SPAN_LINEAR", "top_eigenvalue", "hessian_trace",
           "HessianOperator", "theorem41", "bn_layers", "ICSHook", "LandscapeHook", "HessianHook",
           "DistributionsHook", "BoundHook", "HOOKS", "build_hook", "diagnose", "format_table", "parse_what",
           "INSTRUMENTS", "Instrument", "Context", "Options", "diagnosable", "resolve_layers", "weight_layers",
           "stochastic_layers", "SpectrumHook", "KINDS", "lanczos",
           "power_iteration",
           "slq_density", "hutchpp_trace", "density_on_grid", "hessian_spectrum", "select_params", "collect_batches",
           "BN_MODES", "Direction", "checkpoint_direction", "filter_normalize", "gradient_direction", "interpolate",
           "random_direction", "surface"]
