"""Thin nn.Modules on normlab.core, drop-in for their torch.nn twins."""
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .groupnorm import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm
from .factory import norm_layer, valid_specs

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "norm_layer", "valid_specs"]
