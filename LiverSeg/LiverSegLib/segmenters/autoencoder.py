"""AutoEncoder segmenter: MONAI's convolutional ``AutoEncoder`` decoding three class logits.

Flow (shared by all deep segmenters, :class:`~LiverSegLib.segmenters.deep.DeepModel`): CT in HU ->
working grid, body crop, HU window -> this network tile by tile -> argmax -> clean_labels -> CT grid.
"""

from __future__ import annotations

from typing import Sequence, Union

from monai.networks.nets import AutoEncoder
from torch import nn

from .deep import DEFAULT_PREPROCESSING, NUM_CLASSES, DeepSegmenter, Preset, paper_preset


class AutoEncoderSegmenter(DeepSegmenter):
    """Liver and tumour segmentation with an encoder-decoder without skip connections.

    Network: ``AutoEncoder(spatial_dims=3, in_channels=1, out_channels=3, channels, strides,
    kernel_size, num_res_units)``; input (B, 1, X, Y, Z) CT windowed to 0..1, output (B, 3, X, Y, Z)
    logits; X, Y, Z multiples of the product of ``strides``. Everything the decoder draws passes
    through the coarsest level (no skips), so boundaries are smoother than a U-Net's. Loss: Dice-CE.

    Presets:

    =========  ==============================  ============================  ==============================
    preset     network                         input                         training
    =========  ==============================  ============================  ==============================
    paper      channels (2, 4, 8), strides 2,  whole volume resized to        RMSprop lr 1e-5 momentum
               kernel (3, 5, 3), 2 residual    128x128x64                      0.9, 80 epochs
               units: 10,178 params
    default    channels (16, 32, 64),          2.0 x 2.0 x 2.5 mm grid,       AdamW lr 1e-3, cosine,
               strides 2, kernel 3, 2          body crop, 96x96x64 tiles      300 epochs
               residual units: 389,924 params
    =========  ==============================  ============================  ==============================

    Why the default: with 2, 4 and 8 channels the paper's bottleneck holds 8 numbers per 8x8x8 block,
    too few to carry both the liver outline and small tumours back up; 16-32-64 channels carry them
    for 38x the parameters but about the same run time, because the cost sits in the full-resolution
    layers. The input grid is the U-Net default's (see :class:`UNetSegmenter`).
    """

    name = "autoencoder"
    description = "MONAI convolutional AutoEncoder (trained model)"
    presets = {
        "paper": paper_preset(
            {"channels": (2, 4, 8), "strides": (2, 2, 2), "kernel_size": (3, 5, 3), "num_res_units": 2}
        ),
        "default": Preset(
            network={"channels": (16, 32, 64), "strides": (2, 2, 2), "kernel_size": 3, "num_res_units": 2},
            preprocessing=DEFAULT_PREPROCESSING,
        ),
    }

    @classmethod
    def build_network(
        cls,
        patch_size: Sequence[int],
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: Union[int, Sequence[int]],
        num_res_units: int,
    ) -> nn.Module:
        """(B, 1, X, Y, Z) -> (B, 3, X, Y, Z) logits; any X, Y, Z that are multiples of prod(strides)."""
        return AutoEncoder(
            spatial_dims=3,
            in_channels=1,
            out_channels=NUM_CLASSES,
            channels=tuple(channels),
            strides=tuple(strides),
            kernel_size=kernel_size if isinstance(kernel_size, int) else tuple(kernel_size),
            num_res_units=num_res_units,
        )
