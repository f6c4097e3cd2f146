"""A whitening first layer: fixed filters that decorrelate the images' k x k patches (PCA whitening).

David Page's "How to train your ResNet" (part 8) and hlb-CIFAR10 / airbench initialise the first
convolution from the eigenvectors of the training patches' covariance, scaled by 1/sqrt(eigenvalue),
and freeze it: the rest of the network then sees inputs with unit variance along every direction of
patch space, which trains faster. The filters come in pairs (v, -v) so that a following GELU keeps
both signs of each component.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


def patches(images: torch.Tensor, k: int) -> torch.Tensor:
    """Every k x k patch of N x C x H x W images, as rows of length C*k*k (channel-major, like conv weights)."""
    n, c, h, w = images.shape
    p = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H-k+1, W-k+1, k, k
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)


def whitening_filters(images: torch.Tensor, k: int, eps: float = 5e-4) -> torch.Tensor:
    """2*C*k*k filters (C x k x k each): the patch covariance's eigenvectors, largest eigenvalue first,
    divided by sqrt(eigenvalue + eps), then the same negated. `eps` keeps near-zero directions
    (noise, JPEG's quantised detail) from being blown up."""
    c = images.shape[1]
    rows = patches(images, k).double()
    cov = rows.T @ rows / rows.shape[0]  # inputs are normalised (mean ~0): second moments, as airbench
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(c * k * k, c, k, k)
    return torch.cat([filters, -filters]).float()


@torch.no_grad()
def init_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set `conv`'s weights to the whitening filters of `images` and freeze them (its bias stays trainable)."""
    k = conv.kernel_size[0]
    expected = 2 * conv.in_channels * k * k
    if conv.out_channels != expected or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ConfigError(f"a whitening layer of {k}x{k} filters on {conv.in_channels} channels has {expected} "
                         f"outputs, this one has {conv.out_channels}")
    if images.ndim != 4 or images.shape[1] != conv.in_channels:
        raise ConfigError(f"whitening needs N x {conv.in_channels} x H x W images, got {tuple(images.shape)}")
    conv.weight.copy_(whitening_filters(images.to(conv.weight.device), k, eps).to(conv.weight.dtype))
    conv.weight.requires_grad_(False)
