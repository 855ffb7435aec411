"""ViT AutoEncoder segmenter: MONAI's ``ViTAutoEnc`` with a convolutional segmentation head.

Flow (shared by all deep segmenters, :class:`~LiverSegLib.segmenters.deep.DeepModel`): CT in HU ->
working grid, body crop, HU window -> this network tile by tile -> argmax -> clean_labels -> CT grid.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import ViTAutoEnc
from monai.utils import optional_import
from torch import nn

from ..errors import MethodUnavailableError
from .deep import DEFAULT_PREPROCESSING, NUM_CLASSES, DeepSegmenter, Preset, paper_preset


class ViTSegmentationNet(nn.Module):
    """``ViTAutoEnc`` features followed by a segmentation head giving three class logits.

    The transformer sees the tile as (X/p)(Y/p)(Z/p) tokens of p^3 voxels; two transposed
    convolutions bring ``features`` channels back to full resolution. With ``refine`` the head
    concatenates the input image and applies a 3x3x3 convolution before the 1x1x1 classifier, so
    boundaries follow the CT instead of the p-voxel token grid; without it the head is the 1x1x1
    classifier alone (a linear map of the decoder's features, as a ViTAutoEnc with 3 outputs).

    Args:
        img_size: (X, Y, Z) tile size; fixed, the position embedding has one entry per token.
        patch_size: token side p in voxels (a square number: the decoder upsamples twice by sqrt(p)).
        hidden_size, mlp_dim, num_layers, num_heads: transformer width, feed-forward width, depth, heads.
        features: channels of the decoder output fed to the head.
        refine: add the image-guided 3x3x3 convolution to the head.

    Shapes: (B, 1, X, Y, Z) -> (B, 3, X, Y, Z).
    """

    def __init__(
        self,
        img_size: Sequence[int],
        patch_size: int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        features: int,
        refine: bool,
    ) -> None:
        super().__init__()
        self.vit = ViTAutoEnc(
            in_channels=1,
            img_size=tuple(img_size),
            patch_size=patch_size,
            out_channels=features,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
        )
        self.refine = (
            Convolution(3, features + 1, features, kernel_size=3, act="PRELU", norm="INSTANCE") if refine else None
        )
        self.classify = nn.Conv3d(features, NUM_CLASSES, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features, _ = self.vit(image)  # (B, features, X, Y, Z); per-layer hidden states are not used
        if self.refine is not None:
            features = self.refine(torch.cat([features, image], dim=1))
        return self.classify(features)


class ViTAutoEncoderSegmenter(DeepSegmenter):
    """Liver and tumour segmentation with a vision transformer autoencoder.

    Network: :class:`ViTSegmentationNet`; input (B, 1, X, Y, Z) CT windowed to 0..1 with (X, Y, Z)
    exactly the preset's patch size (the transformer's position embedding is built for it; the
    sliding window always feeds whole tiles), output (B, 3, X, Y, Z) logits. Loss: Dice-CE.

    Presets:

    =========  ================================  ==========================  ============================
    preset     network                           input                       training
    =========  ================================  ==========================  ============================
    paper      patch 16, hidden 768, MLP 3072,   whole volume resized to      RMSprop lr 1e-5 momentum
               12 layers, 12 heads, 1x1x1 head:  128x128x64 (256 tokens)      0.9, 80 epochs
               89,192,787 params
    default    patch 16, hidden 192, MLP 768,    2.0 x 2.0 x 2.5 mm grid,     AdamW lr 3e-4, cosine,
               4 layers, 4 heads, refining       body crop, 96x96x64 tiles    300 epochs
               head: 2,813,780 params            (144 tokens)
    =========  ================================  ==========================  ============================

    Why the default: the paper's ViT-Base (89 M parameters) scored lowest of its networks (Dice
    0.60): a few hundred training volumes are little data for that many weights, and 16^3-voxel tokens
    decoded by transposed convolutions alone give blocky 16-voxel boundaries. A 4-layer, 192-wide
    transformer keeps the global context (every token attends to the whole tile) at 1/30 of the
    weights; it trains at 3e-4, the usual rate for transformers, which are less stable than
    convolutional networks at 1e-3; and the image-guided head lets the boundary follow the CT's edges.
    """

    name = "vitautoenc"
    description = "MONAI ViTAutoEnc with a segmentation head (trained model)"
    presets = {
        "paper": paper_preset(
            {"patch": 16, "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12,
             "features": 16, "refine": False}
        ),
        "default": Preset(
            network={"patch": 16, "hidden_size": 192, "mlp_dim": 768, "num_layers": 4, "num_heads": 4,
                     "features": 16, "refine": True},
            preprocessing=DEFAULT_PREPROCESSING,
            learning_rate=3e-4,
        ),
    }

    @classmethod
    def build_network(
        cls,
        patch_size: Sequence[int],
        patch: int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        features: int,
        refine: bool,
    ) -> nn.Module:
        """(B, 1, *patch_size) -> (B, 3, *patch_size) logits; patch_size sides multiples of ``patch``.

        Raises:
            MethodUnavailableError: the einops package (MONAI's attention blocks need it) is missing.
        """
        if not optional_import("einops")[1]:
            raise MethodUnavailableError("the vitautoenc method needs the einops package: `pip install einops`")
        return ViTSegmentationNet(patch_size, patch, hidden_size, mlp_dim, num_layers, num_heads, features, refine)

    @classmethod
    def size_multiple(cls, patch: int, **unused: object) -> int:
        return patch
