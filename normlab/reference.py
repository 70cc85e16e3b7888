"""Batch Normalization in NumPy, as Ioffe & Szegedy (2015) write it: the oracle for tests and the textbook.

Shapes: x is (N, D), a mini-batch of N examples with D features; gamma, beta are (D,).
Nothing here knows about PyTorch.
"""
from __future__ import annotations

import numpy as np


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    """Algorithm 1 (training transform). Returns (y, cache) for `batchnorm_backward`."""
    m = x.shape[0]
    mu = x.sum(axis=0) / m                      # mini-batch mean
    var = ((x - mu) ** 2).sum(axis=0) / m       # mini-batch variance, biased (1/m)
    std = np.sqrt(var + eps)
    xhat = (x - mu) / std                       # normalize
    y = gamma * xhat + beta                     # scale and shift
    return y, (xhat, std, gamma)


def batchnorm_backward(dy: np.ndarray, cache):
    """Backward of Algorithm 1 (Ioffe & Szegedy Sec. 3; seed 002), dy = dL/dy of shape (N, D).

    Chain rule through the graph x -> (mu, var) -> xhat -> y:
      dxhat = dy * gamma
      dvar  = sum(dxhat * (x - mu)) * -1/2 * (var + eps)^(-3/2)
      dmu   = -sum(dxhat) / std                       (the dvar term vanishes: sum(x - mu) = 0)
      dx    = dxhat / std + dvar * 2 (x - mu) / m + dmu / m
    which collapses to the form with only two cross-sample sums, sum(g) and sum(g * xhat):
      dx = gamma / (m * std) * (m * dy - sum(dy) - xhat * sum(dy * xhat))
    """
    xhat, std, gamma = cache
    m = dy.shape[0]
    dbeta = dy.sum(axis=0)
    dgamma = (dy * xhat).sum(axis=0)
    dx = gamma / (m * std) * (m * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def population_statistics(batch_means, batch_vars, m: int):
    """Algorithm 2, step 10: E[x] = E_B[mu_B]; Var[x] = m / (m - 1) * E_B[var_B] (unbiased)."""
    mean = np.mean(batch_means, axis=0)
    var = m / (m - 1) * np.mean(batch_vars, axis=0)
    return mean, var


def batchnorm_inference(x: np.ndarray, gamma, beta, mean, var, eps: float = 1e-5) -> np.ndarray:
    """Algorithm 2, step 11: y = gamma / sqrt(Var[x] + eps) * x + (beta - gamma E[x] / sqrt(Var[x] + eps)).

    One affine map per feature, which is why BN folds into the layer before it.
    """
    scale = gamma / np.sqrt(var + eps)
    return scale * x + (beta - scale * mean)
