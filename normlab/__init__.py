"""normlab: a laboratory for normalization layers.

From-scratch Batch Normalization (Ioffe & Szegedy 2015) and its family on one core with a hand-written backward,
the instruments of Santurkar et al. (2018), and the experiments of the papers.
"""
from . import core, reference
from .layers import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
                     InstanceNorm3d, LayerNorm, LayerNorm2d, RMSNorm, norm_layer)
from .layers import FrozenBatchNorm, SyncBatchNorm
from .layers import (BatchRenorm1d, BatchRenorm2d, GhostBatchNorm1d, GhostBatchNorm2d, LpBatchNorm1d, LpBatchNorm2d,
                     NoisyBatchNorm1d, NoisyBatchNorm2d, WSConv2d)
from .tools import convert, convert_sync_batchnorm, freeze, fuse_bn, precise_bn

__version__ = "0.1.0"
__all__ = ["core", "reference", "convert", "convert_sync_batchnorm", "freeze", "fuse_bn", "precise_bn",
           "SyncBatchNorm", "FrozenBatchNorm", "norm_layer", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm2d", "RMSNorm",
           "NoisyBatchNorm1d", "NoisyBatchNorm2d", "LpBatchNorm1d", "LpBatchNorm2d", "BatchRenorm1d", "BatchRenorm2d",
           "GhostBatchNorm1d", "GhostBatchNorm2d", "WSConv2d"]
