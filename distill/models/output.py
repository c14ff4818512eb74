"""What every segmentation model returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FEATURE_NAMES = ("c1", "c2", "c3", "c4", "head")
TENSOR_NAMES = ("logits", "aux_logits") + FEATURE_NAMES


@dataclass
class SegOutput:
    """``logits`` at the head's stride (not upsampled), optional ``aux_logits``, and named features:
    ``c1``..``c4`` the last four backbone stages, ``head`` the feature the classifier sees."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def tensor(self, name: str) -> torch.Tensor:
        """A named tensor: 'logits', 'aux_logits' or a feature name."""
        if name == "logits":
            return self.logits
        if name == "aux_logits":
            if self.aux_logits is None:
                raise KeyError(f"this model has no auxiliary head, so it has no 'aux_logits'; it has: {', '.join(self.names())}")
            return self.aux_logits
        if name not in self.features:
            raise KeyError(f"this model provides no tensor {name!r}; it has: {', '.join(self.names())}")
        return self.features[name]

    def names(self) -> list[str]:
        return ["logits"] + (["aux_logits"] if self.aux_logits is not None else []) + list(self.features)
