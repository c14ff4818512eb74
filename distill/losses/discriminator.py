"""The SAGAN-style discriminator of SKD's holistic distillation (docs/loss_math.md §7.3; official
``networks/sagan_models.py``): it scores a map of class logits, higher meaning "looks like the teacher".

    BatchNorm2d(K)                                  (preprocess mode 1 of the official code)
    SN-Conv(K -> d, 4, s2, p1) + LeakyReLU(0.1)     d = ``conv_dim`` (64)
    SN-Conv(d -> 2d, 4, s2, p1) + LeakyReLU(0.1)
    SN-Conv(2d -> 4d, 4, s2, p1) + LeakyReLU(0.1) -> self-attention(4d)
    SN-Conv(4d -> 8d, 4, s2, p1) + LeakyReLU(0.1) -> self-attention(8d)
    Conv(8d -> 1, 4)                                a score map (1x1 for the official 65x65 logits)

Small maps: the official network only fits maps of at least 16x16 (a 4x4 convolution needs a map at
least as large as its kernel, counting padding). Here a map smaller than a convolution's reach is
zero-padded up to it first, evenly on both sides: the same zeros the official padding adds, and nothing
changes for maps of the official size or larger. The last 4x4 convolution then sees a 1x1 map as one
centred tap, i.e. it acts as a 1x1 convolution, so logits of 4x4 (or even 1x1) pixels work.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class SelfAttention(nn.Module):
    """SAGAN self-attention: out = gamma * attention(x) + x, with C/8 query/key channels, gamma init 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key(x).flatten(2)  # (B, C/8, N)
        attention = torch.softmax(q @ k, dim=-1)  # (B, N, N): row i = where position i looks
        out = self.value(x).flatten(2) @ attention.transpose(1, 2)  # (B, C, N)
        return self.gamma * out.view(b, c, h, w) + x


def pad_to_reach(x: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """Zero-pad a map that is smaller than ``kernel - 2 * padding`` in a dimension up to that size."""
    need_h = max(0, kernel - 2 * padding - x.shape[-2])
    need_w = max(0, kernel - 2 * padding - x.shape[-1])
    if need_h == 0 and need_w == 0:
        return x
    return F.pad(x, (need_w // 2, need_w - need_w // 2, need_h // 2, need_h - need_h // 2))


class SAGANDiscriminator(nn.Module):
    KERNEL = 4

    def __init__(self, num_classes: int, conv_dim: int = 64) -> None:
        super().__init__()
        self.preprocess = nn.BatchNorm2d(num_classes)
        widths = [num_classes, conv_dim, 2 * conv_dim, 4 * conv_dim, 8 * conv_dim]
        self.convs = nn.ModuleList(
            [spectral_norm(nn.Conv2d(cin, cout, self.KERNEL, 2, 1)) for cin, cout in pairwise(widths)]
        )
        # after the 3rd and the 4th convolution, as in the official network
        self.attention = nn.ModuleDict({"2": SelfAttention(widths[3]), "3": SelfAttention(widths[4])})
        self.last = nn.Conv2d(widths[4], 1, self.KERNEL)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """A score map (B, 1, h', w')."""
        x = self.preprocess(logits)
        for i, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(pad_to_reach(x, self.KERNEL, 1)), 0.1)
            if str(i) in self.attention:
                x = self.attention[str(i)](x)
        return self.last(pad_to_reach(x, self.KERNEL, 0))
