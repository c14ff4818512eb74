"""The published codes' materialising formulations, kept only as benchmark baselines and as an
independent check in the tests. They return the same SUMS as the public functions, in float32.

* Af-DCD ``get_omni_contrastive_loss``: cdist over every patch of the batch at once, boolean-mask
  gathers of positives and negatives, cross-entropy.
* SKD ``sim_dis_compute``: the B x N x N affinity matrices of both networks.
* CIRKD mini-batch loss: a loop over image pairs, each pair's N x N matrices kept for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segdistill.kernels.contrast import patch_tokens
from segdistill.kernels.precision import at_least_float32


def naive_patch_contrast(
    student: torch.Tensor, teacher: torch.Tensor, patch: int = 4, groups: int = 16, tau: float = 0.07
) -> torch.Tensor:
    g = patch_tokens(at_least_float32(student), patch, groups)
    t = patch_tokens(at_least_float32(teacher.detach()), patch, groups)
    patches, tokens, _ = g.shape
    similarity = -torch.cdist(g, t, p=1)
    group = torch.arange(tokens, device=g.device) % groups
    positive = torch.eye(tokens, dtype=torch.bool, device=g.device).expand(patches, -1, -1)
    negative = (group[:, None] != group[None, :]).expand(patches, -1, -1)
    logits = torch.cat(
        [similarity[positive].view(patches * tokens, 1), similarity[negative].view(patches * tokens, -1)],
        dim=1,
    )
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=g.device)
    return F.cross_entropy(logits / tau, target, reduction="sum")


def naive_pairwise_affinity_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    x, y = at_least_float32(student), at_least_float32(teacher.detach())
    affinity_s = torch.bmm(x.transpose(1, 2), x)
    affinity_t = torch.bmm(y.transpose(1, 2), y)
    return (affinity_s - affinity_t).pow(2).sum()


def naive_cross_image_affinity_kl(
    student: torch.Tensor, teacher: torch.Tensor, tau: float = 0.1
) -> torch.Tensor:
    x, y = at_least_float32(student), at_least_float32(teacher.detach())
    total = x.new_zeros(())
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            log_p_s = F.log_softmax(x[i].T @ x[j] / tau, dim=1)
            p_t = F.softmax(y[i].T @ y[j] / tau, dim=1)
            total = total + F.kl_div(log_p_s, p_t, reduction="sum")
    return total
