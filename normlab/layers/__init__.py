"""Thin nn.Modules on normlab.core, drop-in for their torch.nn twins."""
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .groupnorm import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm, LayerNorm2d, RMSNorm
from .factory import NORMS, norm_layer, valid_specs
from .frozen import FrozenBatchNorm, FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d
from .sync import SyncBatchNorm
from .variants import (GhostBatchNorm1d, GhostBatchNorm2d, LpBatchNorm1d, LpBatchNorm2d, NoisyBatchNorm1d,
                       NoisyBatchNorm2d)
from .renorm import BatchRenorm1d, BatchRenorm2d
from .ws import WSConv2d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm2d", "RMSNorm", "NORMS", "norm_layer", "valid_specs",
           "SyncBatchNorm", "FrozenBatchNorm", "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d",
           "NoisyBatchNorm1d", "NoisyBatchNorm2d", "LpBatchNorm1d", "LpBatchNorm2d", "BatchRenorm1d", "BatchRenorm2d",
           "GhostBatchNorm1d", "GhostBatchNorm2d", "WSConv2d"]
