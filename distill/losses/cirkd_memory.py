"""CIRKD memory-based pixel-to-pixel and pixel-to-region distillation (docs/loss_math.md §10; official
``cirkd_memory.py``, ``StudentSegContrast``).

The teacher's normalised pixel embeddings fill two per-class FIFO queues, shared by the whole run:
a pixel queue (K x ``pixel_memory`` x C_t) and a region queue (K x ``region_memory`` x C_t). Every step,
after an all-gather of the teacher embeddings and labels over all processes, each image and each class
k present in it enqueues (a) the normalised mean teacher embedding of class k into the region queue and
(b) up to ``pixels_per_class`` (16) random teacher pixels of class k into the pixel queue. Then every
valid pixel a (label in [0, K)) is an anchor, and against the same ``pixel_contrast // K + 1`` pixel-queue
slots and ``region_contrast // K + 1`` region-queue slots of every class (one random draw per step):

    s_a = normalize(projection(F^s))_a,   t_a = normalize(F^t)_a,   Q = the sampled queue entries
    l   = 1/#anchors sum_a KL( softmax(t_a Q^T / tau / T) || softmax(s_a Q^T / tau / T) ) * T^2

computed for the pixel queue (p2p) and the region queue (p2r), returned as the named parts ``pixel``
(pixel_weight * p2p) and ``region`` (region_weight * p2r), logged apart (tau = 0.1, T = 1). The projection head is ``Conv1x1(C_s -> C_t) -> BN -> ReLU ->
Conv1x1(C_t -> C_t)`` without biases, its output resized bilinearly to the teacher's size when the output
strides differ (its BN becomes SyncBN in multi-GPU runs, as the trainer converts
loss modules); it learns with the student. The queues are buffers: saved and resumed with the training
state. Published weights: lambda_mp = lambda_mr = 0.1 (VOC scripts 0.01): use the config ``weight`` with
both inner weights at 1.

Difference from the official code, on purpose: its pixel enqueue indexes the image's pixels with a
permutation of the class's pixel *count* (``this_feat[:, perm[:K]]``), i.e. it stores the first pixels of
the image whatever their class; here the stored pixels are pixels of class k, as the paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from segdistill.errors import ConfigError
from segdistill.labels import resize_labels
from segdistill.losses.base import DistillLoss, LossContext
from segdistill.losses.connectors import match_size, require_maps
from segdistill.losses.registry import LOSSES


@dataclass
class CIRKDMemoryParams:
    pixel_memory: int = 20000  # pixel-queue slots per class
    region_memory: int = 2000  # region-queue slots per class
    pixel_contrast: int = 4096  # pixel-queue entries drawn per step, over all classes
    region_contrast: int = 1024  # region-queue entries drawn per step, over all classes
    pixels_per_class: int = 16  # pixels of each class and image enqueued per step
    tau: float = 0.1  # similarity temperature
    kd_temperature: float = 1.0  # T_kd
    pixel_weight: float = 1.0
    region_weight: float = 1.0


@torch.no_grad()
def gather_from_all_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of every process concatenated along dim 0 (this one alone without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def queue_kl(student: torch.Tensor, teacher: torch.Tensor, memory: torch.Tensor, tau: float, temperature: float) -> torch.Tensor:
    """Mean over anchors of KL(softmax(t Q^T / tau / T) || softmax(s Q^T / tau / T)) * T^2."""
    log_p_s = F.log_softmax(student @ memory.T / tau / temperature, dim=1)
    log_p_t = F.log_softmax(teacher @ memory.T / tau / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum() / student.shape[0] * temperature**2


@LOSSES.register("cirkd_memory")
class CIRKDMemory(DistillLoss):
    Params = CIRKDMemoryParams
    default_student = "head"
    default_teacher = "head"
    needs_num_classes = True

    def __init__(
        self, params: CIRKDMemoryParams, student_shape: torch.Size, teacher_shape: torch.Size, num_classes: int
    ) -> None:
        super().__init__(params, student_shape, teacher_shape)
        require_maps(student_shape, teacher_shape)
        sizes = (params.pixel_memory, params.region_memory, params.pixel_contrast, params.region_contrast, params.pixels_per_class)
        if min(sizes) < 1 or params.tau <= 0 or params.kd_temperature <= 0:
            raise ConfigError(f"expected positive sizes and temperatures, got {params}")
        c_s, c_t = student_shape[1], teacher_shape[1]
        self.num_classes = num_classes
        self.projection = nn.Sequential(
            nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t), nn.ReLU(inplace=True), nn.Conv2d(c_t, c_t, 1, bias=False)
        )
        self.register_buffer("pixel_queue", F.normalize(torch.randn(num_classes, params.pixel_memory, c_t), dim=2))
        self.register_buffer("pixel_queue_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("region_queue", F.normalize(torch.randn(num_classes, params.region_memory, c_t), dim=2))
        self.register_buffer("region_queue_ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, teacher: torch.Tensor, labels: torch.Tensor) -> None:
        """FIFO update of both queues from the normalised teacher embeddings of every process's batch."""
        teacher, labels = gather_from_all_processes(teacher), gather_from_all_processes(labels)
        pixel_size, region_size = self.params.pixel_memory, self.params.region_memory
        keep = min(self.params.pixels_per_class, pixel_size)
        for feature, label in zip(teacher.flatten(2), labels.flatten(1), strict=True):
            present = torch.unique(label[(label >= 0) & (label < self.num_classes)]).tolist()
            for k in present:
                where = (label == k).nonzero()[:, 0]
                ptr = int(self.region_queue_ptr[k])
                self.region_queue[k, ptr] = F.normalize(feature[:, where].mean(1), dim=0)
                self.region_queue_ptr[k] = (ptr + 1) % region_size

                chosen = where[torch.randperm(len(where))[:keep].to(where.device)]
                n, ptr = len(chosen), int(self.pixel_queue_ptr[k])
                if ptr + n >= pixel_size:  # the last slots, then start over (official behaviour)
                    self.pixel_queue[k, -n:] = F.normalize(feature[:, chosen].T, dim=1)
                    self.pixel_queue_ptr[k] = 0
                else:
                    self.pixel_queue[k, ptr : ptr + n] = F.normalize(feature[:, chosen].T, dim=1)
                    self.pixel_queue_ptr[k] = ptr + n

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, context: LossContext) -> dict[str, torch.Tensor]:
        p, k = self.params, self.num_classes
        s = F.normalize(match_size(self.projection(student), teacher), dim=1)
        t = F.normalize(teacher, dim=1)
        labels = resize_labels(context.labels, s.shape[2:])
        self.enqueue(t, labels)  # before the loss, as the official code: this batch is in the memory
        valid = ((labels >= 0) & (labels < k)).flatten()
        if not bool(valid.any()):
            zero = 0 * s.square().mean()  # keeps the projection head in the graph (DDP expects its gradients)
            return {"pixel": zero, "region": zero}
        s_anchors = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1])[valid]
        t_anchors = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])[valid]
        pixel_slots = torch.randperm(p.pixel_memory)[: p.pixel_contrast // k + 1].to(s.device)
        region_slots = torch.randperm(p.region_memory)[: p.region_contrast // k + 1].to(s.device)
        pixel_memory = self.pixel_queue[:, pixel_slots].reshape(-1, t.shape[1])
        region_memory = self.region_queue[:, region_slots].reshape(-1, t.shape[1])
        p2p = queue_kl(s_anchors, t_anchors, pixel_memory, p.tau, p.kd_temperature)
        p2r = queue_kl(s_anchors, t_anchors, region_memory, p.tau, p.kd_temperature)
        return {"pixel": p.pixel_weight * p2p, "region": p.region_weight * p2r}
