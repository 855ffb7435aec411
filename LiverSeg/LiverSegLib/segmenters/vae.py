"""Variational autoencoder segmenter: MONAI's ``VarAutoEncoder``, trained with Dice-CE plus a KL term.

Flow (shared by all deep segmenters, :class:`~LiverSegLib.segmenters.deep.DeepModel`): CT in HU ->
working grid, body crop, HU window -> this network tile by tile -> argmax -> clean_labels -> CT grid.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch
from monai.networks.nets import VarAutoEncoder
from torch import nn

from .deep import DEFAULT_PREPROCESSING, NUM_CLASSES, DeepSegmenter, Preset, dice_ce_loss, paper_preset

KL_WEIGHT = 1e-4
"""Weight of the KL divergence (summed over latent dimensions, averaged over the batch) in the loss.

Dice-CE starts near 2 and falls below 0.5 on phantoms; the KL term of the 64-dimensional default code
is about 10 at initialisation and grows as the code learns to carry the segmentation. At 1e-4 the KL
term stays a small fraction of the loss: it keeps the codes near N(0, I), so the posterior mean used at
inference decodes to a plausible segmentation, yet it cannot outweigh the segmentation term. Weights near 1 invite posterior collapse, the known failure of a VAE whose
reconstruction term is small next to its KL term: the decoder ignores the code and paints an average
liver in every tile.
"""


class VAESegmenter(DeepSegmenter):
    """Liver and tumour segmentation decoded from a low-dimensional latent code of each tile.

    Network: ``VarAutoEncoder(spatial_dims=3, in_shape=(1, *patch_size), out_channels=3, latent_size,
    channels, strides, num_res_units, use_sigmoid=False)``; input (B, 1, X, Y, Z) CT windowed to 0..1
    with (X, Y, Z) exactly the patch size (fully connected layers join the encoder to the latent code),
    output (B, 3, X, Y, Z) logits decoded from the code; inference decodes the posterior mean.
    Loss: Dice-CE + ``KL_WEIGHT`` x KL(q(z | x) || N(0, I)).

    Presets:

    =========  ===============================  ==========================  ============================
    preset     network                          input                       training
    =========  ===============================  ==========================  ============================
    paper      latent 2, channels (16, 32, 48,  whole volume resized to      RMSprop lr 1e-5 momentum
               64), strides (1, 2, 2, 2), no    128x128x64                   0.9, 80 epochs
               residual units: 1,195,982 params
    default    latent 64, channels (16, 32, 64, 2.0 x 2.0 x 2.5 mm grid,     AdamW lr 1e-3, cosine,
               64), strides 2, 1 residual unit: body crop, 96x96x64 tiles    300 epochs
               2,466,100 params
    =========  ===============================  ==========================  ============================

    The paper gives the latent size and channels; its strides are not stated: (1, 2, 2, 2) follows
    MONAI's VAE tutorial (first level at full resolution). Why the default: two numbers cannot describe
    a liver outline plus tumours in a tile; a 64-number code has room for them, and with a 2 x 2 x 2.5
    mm grid and 96x96x64 tiles each code describes a 19 x 19 x 16 cm block. Strides of 2 at every level
    keep the fully connected layers at a 6x6x4 grid (a stride-1 first level would make it 8x larger).
    """

    name = "vae"
    description = "MONAI VarAutoEncoder, Dice-CE + KL (trained model)"
    presets = {
        "paper": paper_preset(
            {"latent_size": 2, "channels": (16, 32, 48, 64), "strides": (1, 2, 2, 2), "num_res_units": 0}
        ),
        "default": Preset(
            network={"latent_size": 64, "channels": (16, 32, 64, 64), "strides": (2, 2, 2, 2), "num_res_units": 1},
            preprocessing=DEFAULT_PREPROCESSING,
        ),
    }

    @classmethod
    def build_network(
        cls,
        patch_size: Sequence[int],
        latent_size: int,
        channels: Sequence[int],
        strides: Sequence[int],
        num_res_units: int,
    ) -> nn.Module:
        """(B, 1, *patch_size) -> (logits (B, 3, *patch_size), mu (B, L), logvar (B, L), z (B, L))."""
        return VarAutoEncoder(
            spatial_dims=3,
            in_shape=(1, *patch_size),
            out_channels=NUM_CLASSES,
            latent_size=latent_size,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            use_sigmoid=False,  # logits: the softmax is in the loss and the argmax needs none
            use_mean_at_inference=True,  # deterministic segmentation from the posterior mean
        )

    @staticmethod
    def logits(output: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        return output[0]

    @classmethod
    def loss(cls, output: Any, target: torch.Tensor, **options: Any) -> torch.Tensor:
        """Dice-CE of the decoded logits plus ``KL_WEIGHT`` times the KL divergence of the code."""
        logits, mu, logvar, _ = output
        kl = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
        return dice_ce_loss(logits, target, **options) + KL_WEIGHT * kl
