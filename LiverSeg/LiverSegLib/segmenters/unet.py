"""U-Net segmenter: MONAI's residual ``UNet`` with three output classes.

Flow (shared by all deep segmenters, :class:`~LiverSegLib.segmenters.deep.DeepModel`): CT in HU ->
working grid, body crop, HU window -> this network tile by tile -> argmax -> clean_labels -> CT grid.
"""

from __future__ import annotations

from typing import Sequence

from monai.networks.nets import UNet
from torch import nn

from .deep import DEFAULT_PREPROCESSING, NUM_CLASSES, DeepSegmenter, Preset, paper_preset


class UNetSegmenter(DeepSegmenter):
    """Liver and tumour segmentation with MONAI's residual U-Net.

    Network: ``UNet(spatial_dims=3, in_channels=1, out_channels=3, channels, strides, num_res_units)``;
    input (B, 1, X, Y, Z) CT windowed to 0..1, output (B, 3, X, Y, Z) logits (background, liver,
    tumour); X, Y, Z multiples of the product of ``strides``. Loss: Dice-CE.

    Presets:

    =========  =========================  ============================  ====================================
    preset     network                    input                         training
    =========  =========================  ============================  ====================================
    paper      channels (16,32,64,128,    whole volume resized to        RMSprop lr 1e-5 momentum 0.9,
               256), strides 2, 2 res.    128x128x64                      80 epochs
               units: 4,807,482 params
    default    channels (16,32,64,128,    2.0 x 2.0 x 2.5 mm grid,       AdamW lr 1e-3, cosine, 300 epochs,
               256), strides 2, 1 res.    body crop, 96x96x64 tiles      2 volumes x 4 patches per step
               unit: 2,449,989 params
    =========  =========================  ============================  ====================================

    The paper gives the channels; strides of 2 and two residual units are those of MONAI's U-Net
    tutorial, whose channels the paper's match.

    Why the default: the paper's resize to 128x128x64 squeezes a 400 mm abdomen into 3 mm x 7 mm
    voxels, so every prediction is blurred back onto the CT grid; a fixed 2 x 2 x 2.5 mm grid keeps
    the liver boundary and centimetre tumours and gives the network the same physical scale on every
    scan. Five levels give a receptive field larger than a 96x96x64 tile (192 x 192 x 160 mm), enough
    to tell the liver from the spleen by position. One residual unit per level instead of two halves
    the parameters; speed barely changes because MONAI's U-Net spends its time in the full-resolution
    layers, which do not depend on the depth.
    """

    name = "unet"
    description = "MONAI residual U-Net (trained model)"
    presets = {
        "paper": paper_preset({"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}),
        "default": Preset(
            network={"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 1},
            preprocessing=DEFAULT_PREPROCESSING,
        ),
    }

    @classmethod
    def build_network(
        cls, patch_size: Sequence[int], channels: Sequence[int], strides: Sequence[int], num_res_units: int
    ) -> nn.Module:
        """(B, 1, X, Y, Z) -> (B, 3, X, Y, Z) logits; any X, Y, Z that are multiples of prod(strides)."""
        return UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=NUM_CLASSES,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
        )
