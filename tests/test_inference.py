"""Prediction modes: whole image, sliding window, multi-scale + flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdistill.config import ModelConfig
from segdistill.inference import predict
from segdistill.models import SegOutput, build_model

K = 4


class PointwiseModel(nn.Module):
    """Logits = a 1x1 convolution of the input, at stride 1: translation-equivariant, no context."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 1)

    def forward(self, images: torch.Tensor) -> SegOutput:
        return SegOutput(self.conv(images))


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="lcnet_050", head="fcn", head_channels=16, output_stride=8, pretrained=None)
    return build_model(cfg, K).eval()


def test_whole_is_upsampled_logits(tiny_model: nn.Module) -> None:
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        logits = tiny_model(images).logits
    assert logits.shape == (2, K, 4, 6)
    expected = F.interpolate(logits, size=(32, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(predict(tiny_model, images, "whole"), expected)


def test_slide_with_one_window_equals_whole(tiny_model: nn.Module) -> None:
    images = torch.randn(2, 3, 32, 48)
    whole = predict(tiny_model, images, "whole")
    slide = predict(tiny_model, images, "slide", crop=(32, 48), stride=(16, 16))
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)


def test_slide_overlapping_crops_equal_whole_for_pointwise_model() -> None:
    model = PointwiseModel().eval()
    images = torch.randn(2, 3, 37, 53)
    whole = predict(model, images, "whole")
    with torch.no_grad():
        direct = model.conv(images)
    torch.testing.assert_close(whole, direct, rtol=0, atol=0)
    # overlapping windows, a last window flush with the border, a window wider than the image
    for crop, stride in [((16, 16), (8, 8)), ((20, 24), (7, 11)), ((40, 30), (10, 10))]:
        slide = predict(model, images, "slide", crop=crop, stride=stride)
        assert slide.shape == whole.shape
        torch.testing.assert_close(slide, whole, rtol=1e-6, atol=1e-6)


def test_slide_needs_a_crop_size() -> None:
    with pytest.raises(ValueError, match="crop"):
        predict(PointwiseModel(), torch.randn(1, 3, 8, 8), "slide")


def test_flip_on_symmetric_image_is_softmax_of_whole() -> None:
    model = PointwiseModel().eval()
    half = torch.randn(1, 3, 20, 13)
    images = torch.cat([half, half.flip(-1)], dim=-1)  # mirror-symmetric, 20x26
    assert torch.equal(images, images.flip(-1))
    scores = predict(model, images, scales=[1.0], flip=True)
    torch.testing.assert_close(scores, predict(model, images, "whole").softmax(1))
    torch.testing.assert_close(scores.sum(1), torch.ones(1, 20, 26))  # averaged: still probabilities


def test_flip_averages_the_two_views(tiny_model: nn.Module) -> None:
    images = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        plain = F.interpolate(tiny_model(images).logits, size=(32, 40), mode="bilinear", align_corners=False)
        mirrored = F.interpolate(
            tiny_model(images.flip(-1)).logits, size=(32, 40), mode="bilinear", align_corners=False
        )
    expected = (plain.softmax(1) + mirrored.flip(-1).softmax(1)) / 2
    torch.testing.assert_close(predict(tiny_model, images, scales=[1.0], flip=True), expected)


def test_multi_scale_averages_probabilities() -> None:
    model = PointwiseModel().eval()
    images = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        small = F.interpolate(images, size=(12, 16), mode="bilinear", align_corners=False)
        up = F.interpolate(model.conv(small), size=(24, 32), mode="bilinear", align_corners=False)
        expected = (model.conv(images).softmax(1) + up.softmax(1)) / 2
    torch.testing.assert_close(predict(model, images, scales=[0.5, 1.0]), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "whole"},
        {"mode": "slide", "crop": (24, 24), "stride": (16, 16)},
        {"mode": "slide", "crop": (24, 24)},  # default stride
        {"mode": "whole", "scales": [0.75, 1.25], "flip": True},
        {"mode": "slide", "crop": (32, 32), "stride": (20, 20), "scales": [0.5, 1.0], "flip": True},
    ],
)
def test_output_has_the_input_size_for_odd_sizes(tiny_model: nn.Module, kwargs: dict) -> None:
    images = torch.randn(1, 3, 37, 53)
    scores = predict(tiny_model, images, **kwargs)
    assert scores.shape == (1, K, 37, 53)
    assert torch.isfinite(scores).all()
