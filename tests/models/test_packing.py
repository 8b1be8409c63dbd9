"""The ModelManager packs a UNet's weights for oneDNN while it samples on the CPU, and unpacks them bit for bit
for everything else: LoRA patches (also a hook's, mid-run), restores, and callers of ``unet()``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from engine.backend.packed_layers import is_packed, packing_available
from engine.models.handles import FileRef, ModelHandle, VaeHandle, WeightPatch
from engine.models.loaders import CheckpointFile, detect_family
from engine.models.manager import ModelManager
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.models.test_patching import CONV, Q, lora_pair, write_lora

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed operators")
LATENT = (1, 4, 8, 8)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    path = build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors", "sd1", dtype=torch.float32)
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    return ModelHandle(FileRef.of(path), family)


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> FileRef:
    tensors = {**lora_pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32),
               **lora_pair("lora_unet_down_blocks_0_resnets_0_conv1", 32, 32 * 9, seed=3)}
    return write_lora(tmp_path_factory.mktemp("lora") / "lora.safetensors", tensors)


def denoise(unet: torch.nn.Module) -> Tensor:
    generator = torch.Generator().manual_seed(7)
    x, context = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 5, 64, generator=generator)
    with torch.inference_mode():
        return unet(x, torch.tensor([300.0, 300.0]), context)


def dense_weights(unet: torch.nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in unet.named_parameters()}


def test_sampling_packs_and_unet_gives_dense_weights_back(model: ModelHandle) -> None:
    manager = ModelManager("cpu")
    original = dense_weights(manager.unet(model))
    expected = denoise(manager.unet(model))
    with manager.sampling(model, LATENT) as unet:
        assert is_packed(unet)
        torch.testing.assert_close(denoise(unet), expected, rtol=1e-5, atol=1e-5)
    assert is_packed(unet)  # stays packed for the next run
    dense = manager.unet(model)
    assert dense is unet and not is_packed(dense)
    assert all(torch.equal(p, original[name]) for name, p in dense.named_parameters())


def test_lora_patches_on_a_packed_unet(model: ModelHandle, lora: FileRef) -> None:
    patched_handle = model.with_patch(WeightPatch(lora, 0.7))
    reference = ModelManager("cpu", pack_weights=False)
    expected = denoise(reference.unet(patched_handle))
    expected_weights = dense_weights(reference.unet(patched_handle))
    manager = ModelManager("cpu")
    original = dense_weights(manager.unet(model))
    with manager.sampling(model, LATENT) as unet:
        assert is_packed(unet)
        # what a hook does mid-run: the same UNet with more patches, packed again
        hooked = manager.unet(patched_handle)
        assert hooked is unet and is_packed(unet)
        torch.testing.assert_close(denoise(unet), expected, rtol=1e-5, atol=1e-5)
        manager.unet(model)  # the hook's range ends: patches off
        assert is_packed(unet)
    with manager.sampling(patched_handle, LATENT) as unet:
        torch.testing.assert_close(denoise(unet), expected, rtol=1e-5, atol=1e-5)
    patched_weights = dense_weights(manager.unet(patched_handle))
    assert torch.equal(patched_weights[Q], expected_weights[Q]) and torch.equal(patched_weights[CONV],
                                                                                expected_weights[CONV])
    restored = manager.unet(model)
    assert all(torch.equal(p, original[name]) for name, p in restored.named_parameters())


def test_packing_off(model: ModelHandle) -> None:
    manager = ModelManager("cpu", pack_weights=False)
    with manager.sampling(model, LATENT) as unet:
        assert not is_packed(unet)


def test_a_16_bit_vae_stays_16_bit_on_the_cpu_and_decodes_the_same(tmp_path: Path) -> None:
    path = build_checkpoint(tmp_path / "tiny-fp16.safetensors", "sd1", dtype=torch.float16)
    handle = VaeHandle(FileRef.of(path), "first_stage_model.")
    manager = ModelManager("cpu")
    vae = manager.vae(handle)
    stored = {p.dtype for p in vae.parameters()}
    assert stored == {torch.float16} and vae.dtype == torch.float32
    assert manager.loaded()[0]["bytes"] == sum(p.numel() * 2 for p in vae.parameters())
    widened = ModelManager("cpu")
    widened._vae_storage = lambda ckpt, prefix: torch.float32  # type: ignore[method-assign]
    reference = widened.vae(handle)
    assert {p.dtype for p in reference.parameters()} == {torch.float32}
    generator = torch.Generator().manual_seed(5)
    latent, image = torch.randn(1, 4, 8, 8, generator=generator), torch.rand(1, 3, 64, 64, generator=generator)
    with torch.inference_mode():
        assert torch.equal(vae.decode(latent), reference.decode(latent))
        assert torch.equal(vae.encode(image * 2 - 1), reference.encode(image * 2 - 1))
