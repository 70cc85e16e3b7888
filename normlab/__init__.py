"""normlab: a laboratory for normalization layers.

From-scratch Batch Normalization (Ioffe & Szegedy 2015) and its family on one core with a hand-written backward,
the instruments of Santurkar et al. (2018), and the experiments of the papers.
"""
from . import core, reference
from .layers import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
                     InstanceNorm3d, LayerNorm, norm_layer)
from .tools import convert

__version__ = "0.1.0"
__all__ = ["core", "reference", "convert", "norm_layer", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]
