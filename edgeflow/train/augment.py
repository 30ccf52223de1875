"""Batch augmentation on tensors (cheaper than per-image PIL work on 2 cores)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, *, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding (zero = the mean colour after normalisation) + h-flip.

    The random choices come from ``generator`` (on the CPU, so runs are reproducible whatever the
    device); the gather itself runs where ``x`` is.
    """
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None].to(dev)
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :].to(dev)
        x = padded[torch.arange(b, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], x.flip(3), x)
