"""The one loss registry: name -> :class:`DistillLoss` subclass."""

from segdistill.registry import Registry

LOSSES: Registry = Registry("loss")
