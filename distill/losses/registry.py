"""The one loss registry: name -> :class:`DistillLoss` subclass."""

from distill.registry import Registry

LOSSES: Registry = Registry("loss")
