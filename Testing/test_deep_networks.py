"""The four networks: the paper's presets as the issue states them, shapes, documented parameter counts,
and a few training steps on a phantom patch that lower the loss."""

from __future__ import annotations

import pytest
import torch

from monai.losses import DiceCELoss

from LiverSegLib.phantom import make_phantom
from LiverSegLib.preprocessing import UNSURE
from LiverSegLib.segmenters.deep import (
    DEEP_METHODS,
    DeepModel,
    count_parameters,
    deep_segmenter_class,
    dice_ce_loss,
    preprocessing_transforms,
    volume_to_metatensor,
)
from LiverSegLib.segmenters.vae import KL_WEIGHT, VAESegmenter

torch.set_num_threads(2)

SMALL_PATCH = (32, 32, 32)


def test_paper_presets_are_the_papers() -> None:
    unet, autoencoder, vit, vae = (deep_segmenter_class(m).presets["paper"] for m in DEEP_METHODS)
    assert unet.network["channels"] == (16, 32, 64, 128, 256)
    assert autoencoder.network["channels"] == (2, 4, 8)
    assert autoencoder.network["strides"] == (2, 2, 2)
    assert autoencoder.network["kernel_size"] == (3, 5, 3)
    assert autoencoder.network["num_res_units"] == 2
    assert (vit.network["patch"], vit.network["hidden_size"], vit.network["mlp_dim"]) == (16, 768, 3072)
    assert (vit.network["num_layers"], vit.network["num_heads"]) == (12, 12)
    assert vae.network["latent_size"] == 2
    assert vae.network["channels"] == (16, 32, 48, 64)
    for preset in (unet, autoencoder, vit, vae):
        assert preset.preprocessing.resize == (128, 128, 64)
        assert (preset.optimizer, preset.learning_rate, preset.epochs) == ("rmsprop", 1e-5, 80)


@pytest.mark.parametrize("preset", ["paper", "default"])
@pytest.mark.parametrize("method", DEEP_METHODS)
def test_parameter_count_is_documented(method: str, preset: str) -> None:
    cls = deep_segmenter_class(method)
    config = cls.preset_config(preset)
    network = cls.build_network(config.preprocessing.patch_size, **config.network)
    assert f"{count_parameters(network):,} params" in cls.__doc__


@pytest.mark.parametrize("preset", ["paper", "default"])
@pytest.mark.parametrize("method", DEEP_METHODS)
def test_three_class_logits_of_the_input_size(method: str, preset: str) -> None:
    cls = deep_segmenter_class(method)
    config = cls.preset_config(preset, patch_size=SMALL_PATCH)
    network = cls.build_network(config.preprocessing.patch_size, **config.network).eval()
    with torch.no_grad():
        logits = cls.logits(network(torch.rand(2, 1, *SMALL_PATCH)))
    assert logits.shape == (2, 3, *SMALL_PATCH)


def _phantom_patches() -> tuple:
    """Two (1, 32, 32, 32) patches around the liver of a phantom on the 6 x 6 x 9 mm grid, with labels."""
    ct, labels = make_phantom(shape=(64, 64, 32), spacing=(6.0, 6.0, 9.0), seed=3)
    config = deep_segmenter_class("unet").preset_config("default", spacing=(6.0, 6.0, 9.0), patch_size=SMALL_PATCH)
    data = {"image": volume_to_metatensor(ct), "label": volume_to_metatensor(labels)}
    for transform in preprocessing_transforms(config.preprocessing, ("image", "label")):
        data = transform(data)
    image, label = data["image"].as_subclass(torch.Tensor), data["label"].as_subclass(torch.Tensor)
    x0 = int(torch.nonzero(label[0] == 1).float().mean(0)[0]) - 16
    x0 = max(0, min(x0, image.shape[1] - 32))
    crops = [(slice(x0, x0 + 32), slice(a, a + 32), slice(0, 32)) for a in (0, image.shape[2] - 32)]
    images = torch.stack([image[(slice(None), *c)] for c in crops])
    targets = torch.stack([label[(slice(None), *c)] for c in crops])
    assert targets.eq(1).any()
    return images, targets


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_a_few_steps_lower_the_loss(method: str) -> None:
    images, targets = _phantom_patches()
    cls = deep_segmenter_class(method)
    config = cls.preset_config("default", patch_size=SMALL_PATCH)
    torch.manual_seed(0)
    network = cls.build_network(config.preprocessing.patch_size, **config.network).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=cls.presets["default"].learning_rate)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = cls.loss(network(images), targets)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.95 * losses[0], losses


def test_loss_is_monai_dice_ce_when_every_voxel_is_labelled() -> None:
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (2, 1, *SMALL_PATCH)).float()
    logits = torch.randn(2, 3, *SMALL_PATCH)
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, targets)
    assert torch.isclose(dice_ce_loss(logits, targets), expected, atol=1e-6)


def test_loss_ignores_unsure_voxels() -> None:
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (1, 1, *SMALL_PATCH)).float()
    unsure = torch.zeros_like(targets, dtype=torch.bool)
    unsure[..., : SMALL_PATCH[-1] // 2] = True
    targets[unsure] = UNSURE
    logits = torch.randn(1, 3, *SMALL_PATCH, requires_grad=True)
    loss = dice_ce_loss(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    # Whatever the network says at an unsure voxel, the loss neither rewards nor penalises it.
    assert logits.grad[unsure.expand_as(logits)].abs().max() == 0
    assert logits.grad[~unsure.expand_as(logits)].abs().max() > 0
    changed = logits.detach().clone()
    changed[unsure.expand_as(changed)] = 100.0
    assert torch.isclose(dice_ce_loss(changed, targets), loss.detach())


def test_vae_loss_adds_the_weighted_kl_term() -> None:
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (2, 1, *SMALL_PATCH)).float()
    logits = torch.randn(2, 3, *SMALL_PATCH)
    mu, logvar = torch.randn(2, 4), torch.randn(2, 4)
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
    loss = VAESegmenter.loss((logits, mu, logvar, mu), targets)
    assert torch.isclose(loss, dice_ce_loss(logits, targets) + KL_WEIGHT * kl)
    assert VAESegmenter.logits((logits, mu, logvar, mu)) is logits


def test_vae_segments_deterministically_from_the_posterior_mean() -> None:
    cls = deep_segmenter_class("vae")
    config = cls.preset_config("default", spacing=(6.0, 6.0, 9.0), patch_size=SMALL_PATCH)
    network = cls.build_network(config.preprocessing.patch_size, **config.network)
    model = DeepModel(network, config, cls.logits, torch.device("cpu"))
    ct, _ = make_phantom(shape=(48, 48, 24), spacing=(8.0, 8.0, 12.0), seed=1, n_tumours=0)
    image = model.preprocess(ct)
    assert (model.predict(image) == model.predict(image)).all()


def test_batch_dice_does_not_punish_tumour_in_a_patch_without_tumour() -> None:
    # Two patches: one has tumour, the other none. The network predicts tumour a little everywhere.
    targets = torch.zeros((2, 1, *SMALL_PATCH))
    targets[0, :, :4, :4, :4] = 2
    logits = torch.zeros(2, 3, *SMALL_PATCH)
    logits[:, 2] = 0.5
    per_patch = dice_ce_loss(logits, targets)
    pooled = dice_ce_loss(logits, targets, batch_dice=True)
    # Per patch, the empty patch's tumour Dice is 0 whatever the network does; pooled, it is not a total loss.
    assert pooled < per_patch


def test_tumour_weight_raises_the_cost_of_missed_tumour() -> None:
    targets = torch.zeros((1, 1, *SMALL_PATCH))
    targets[..., :4, :4, :4] = 2
    logits = torch.zeros(1, 3, *SMALL_PATCH)
    logits[:, 0] = 2.0  # background everywhere: right but for the missed tumour
    assert dice_ce_loss(logits, targets, tumour_weight=3.0) > dice_ce_loss(logits, targets)
    assert torch.isclose(dice_ce_loss(logits, targets, tumour_weight=1.0), dice_ce_loss(logits, targets))
