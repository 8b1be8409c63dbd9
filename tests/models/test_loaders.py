"""engine.models.loaders on real (tiny) checkpoint files: family detection, errors, lazy reading, pickles.

The files come from tests/fixtures/tiny_checkpoints.py: every family in its real key layout, written
as safetensors and as ``.ckpt`` pickles, in fp16, bf16 and fp32.
"""

from __future__ import annotations

import json
import pickle
import re
import resource
import struct
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.text import load_text_encoder
from engine.backend.unet import UNetConfig, UNetModel, load_weights, sdxl_adm, sdxl_refiner_adm
from engine.backend.vae import AutoencoderKL, VAEConfig, adapt_vae_weight
from engine.models.loaders import CheckpointFile, ModelFamily, UnsupportedModel, detect_family
from tests.fixtures.tiny_checkpoints import (
    FAMILIES,
    UNET_PREFIX,
    V_PREDICTION_KEY,
    VAE_CONFIG,
    VAE_PREFIX,
    build_checkpoint,
    build_controlnet_like_file,
    build_lora_like_file,
    build_state_dict,
    build_vae_file,
    context_dim,
    pooled_dim,
    save_state_dict,
    unet_config,
)
from tests.support.data import SD15_CHECKPOINT_KEYS

TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")
SUFFIX = {"safetensors": ".safetensors", "ckpt": ".ckpt"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}

BuildFile = Callable[..., Path]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> BuildFile:
    """Build (once per module) a tiny checkpoint file for the given arguments."""
    built: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("tiny")

    def get(family: str, *, dtype: str = "fp16", fmt: str = "safetensors", inpaint: bool = False,
            v_prediction: bool = False) -> Path:
        key = (family, dtype, fmt, inpaint, v_prediction)
        if key not in built:
            name = f"{family}-{dtype}{'-inpaint' if inpaint else ''}{'-v' if v_prediction else ''}{SUFFIX[fmt]}"
            built[key] = build_checkpoint(root / name, family, dtype=DTYPES[dtype], inpaint=inpaint,
                                          v_prediction=v_prediction, fmt=fmt)
        return built[key]

    return get


# ----------------------------------------------------------------------------------- family detection

DETECTION_CASES = {
    "sd1": ("sd1", {}, ModelFamily("sd1", "eps", 4)),
    "sd2-eps": ("sd2", {}, ModelFamily("sd2", "eps", 4)),
    "sd2-v": ("sd2", {"v_prediction": True}, ModelFamily("sd2", "v", 4)),
    "sdxl": ("sdxl", {}, ModelFamily("sdxl", "eps", 4)),
    "sdxl_refiner": ("sdxl_refiner", {}, ModelFamily("sdxl_refiner", "eps", 4)),
    "sd1-inpaint": ("sd1", {"inpaint": True}, ModelFamily("sd1", "eps", 9)),
    "sd2-inpaint": ("sd2", {"inpaint": True}, ModelFamily("sd2", "eps", 9)),
    "sdxl-inpaint": ("sdxl", {"inpaint": True}, ModelFamily("sdxl", "eps", 9)),
}


# Every family in every dtype; the inpainting variants (one shape differs) in the default fp16.
SAFETENSORS_CASES = [(case, dtype) for case in sorted(DETECTION_CASES) for dtype in sorted(DTYPES)
                     if "inpaint" not in case or dtype == "fp16"]


@pytest.mark.parametrize(("case", "dtype"), SAFETENSORS_CASES)
def test_detects_family_of_safetensors(tiny_file: BuildFile, case: str, dtype: str) -> None:
    family, options, expected = DETECTION_CASES[case]
    with CheckpointFile(tiny_file(family, dtype=dtype, **options)) as ckpt:
        assert detect_family(ckpt) == expected


@pytest.mark.parametrize("case", sorted(DETECTION_CASES))
def test_detects_family_of_ckpt(tiny_file: BuildFile, case: str) -> None:
    family, options, expected = DETECTION_CASES[case]
    with CheckpointFile(tiny_file(family, fmt="ckpt", **options)) as ckpt:
        assert detect_family(ckpt) == expected


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_detects_v_prediction_in_ckpt_of_any_dtype(tiny_file: BuildFile, dtype: str) -> None:
    for v_prediction, prediction in ((True, "v"), (False, "eps")):
        with CheckpointFile(tiny_file("sd2", dtype=dtype, fmt="ckpt", v_prediction=v_prediction)) as ckpt:
            assert detect_family(ckpt).prediction == prediction


def test_v_prediction_key_statistic_brackets_threshold(tiny_file: BuildFile) -> None:
    """The sd2 fixtures sit clearly on either side of ComfyUI's 0.09 rule (so detection is not luck)."""
    with CheckpointFile(tiny_file("sd2", v_prediction=True)) as v_file, CheckpointFile(tiny_file("sd2")) as eps_file:
        assert float(v_file.load(V_PREDICTION_KEY, torch.float32).std()) > 0.15
        assert 0.0 < float(eps_file.load(V_PREDICTION_KEY, torch.float32).std()) < 0.05


@pytest.mark.parametrize(
    ("family", "label", "scale", "is_sdxl"),
    [
        (ModelFamily("sd1", "eps", 4), "SD1.x", 0.18215, False),
        (ModelFamily("sd1", "eps", 9), "SD1.x inpainting", 0.18215, False),
        (ModelFamily("sd2", "eps", 4), "SD2.x", 0.18215, False),
        (ModelFamily("sd2", "v", 4), "SD2.x (v-prediction)", 0.18215, False),
        (ModelFamily("sd2", "v", 9), "SD2.x inpainting (v-prediction)", 0.18215, False),
        (ModelFamily("sdxl", "eps", 4), "SDXL", 0.13025, True),
        (ModelFamily("sdxl", "eps", 9), "SDXL inpainting", 0.13025, True),
        (ModelFamily("sdxl_refiner", "eps", 4), "SDXL refiner", 0.13025, True),
    ],
)
def test_model_family_properties(family: ModelFamily, label: str, scale: float, is_sdxl: bool) -> None:
    assert family.label == label
    assert family.latent_scale_factor == scale
    assert family.is_sdxl is is_sdxl
    assert family.is_inpaint is (family.in_channels == 9)
    assert family.latent_channels == 4


def test_detected_family_properties(tiny_file: BuildFile) -> None:
    with CheckpointFile(tiny_file("sd1", inpaint=True)) as ckpt:
        family = detect_family(ckpt)
    assert (family.is_inpaint, family.label, family.latent_scale_factor) == (True, "SD1.x inpainting", 0.18215)
    with CheckpointFile(tiny_file("sdxl_refiner")) as ckpt:
        family = detect_family(ckpt)
    assert (family.is_inpaint, family.label, family.latent_scale_factor) == (False, "SDXL refiner", 0.13025)


def test_prediction_override(tiny_file: BuildFile) -> None:
    with CheckpointFile(tiny_file("sd2")) as ckpt:
        assert detect_family(ckpt).prediction == "eps"
        assert detect_family(ckpt, prediction="v") == ModelFamily("sd2", "v", 4)
    with CheckpointFile(tiny_file("sd2", v_prediction=True)) as ckpt:
        assert detect_family(ckpt, prediction="eps") == ModelFamily("sd2", "eps", 4)
    with CheckpointFile(tiny_file("sd1")) as ckpt:
        family = detect_family(ckpt, prediction="v")
        assert family == ModelFamily("sd1", "v", 4)
        assert family.label == "SD1.x (v-prediction)"
        with pytest.raises(ValueError, match="'eps' or 'v'"):
            detect_family(ckpt, prediction="epsilon")


# ----------------------------------------------------------------------------------- unsupported files


def test_lora_file_is_refused_and_sent_to_loras(tmp_path: Path) -> None:
    path = build_lora_like_file(tmp_path / "style.safetensors")
    message = _refusal(path)
    assert "style.safetensors is a LoRA" in message
    assert "models/loras" in message and "LoraLoader" in message


def test_peft_style_lora_is_refused_as_lora(tmp_path: Path) -> None:
    path = tmp_path / "peft.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(32, 4)}, str(path))
    assert "is a LoRA" in _refusal(path)


def test_controlnet_file_is_refused_and_sent_to_controlnet(tmp_path: Path) -> None:
    path = build_controlnet_like_file(tmp_path / "canny.safetensors")
    message = _refusal(path)
    assert "canny.safetensors is a ControlNet" in message
    assert "models/controlnet" in message and "ControlNetLoader" in message


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_bare_vae_file_is_refused_and_sent_to_vae(tmp_path: Path, fmt: str) -> None:
    path = build_vae_file(tmp_path / f"vae-ft-mse{SUFFIX[fmt]}", fmt=fmt)
    message = _refusal(path)
    assert f"vae-ft-mse{SUFFIX[fmt]} is a VAE without a UNet" in message
    assert "models/vae" in message and "VAELoader" in message


def test_checkpoint_without_unet_is_refused_as_vae(tmp_path: Path) -> None:
    state = {k: v for k, v in build_state_dict("sd1").items() if k.startswith(VAE_PREFIX)}
    assert "is a VAE without a UNet" in _refusal(save_state_dict(state, tmp_path / "vae_only.safetensors"))


def test_random_tensor_file_is_refused_with_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "mystery.safetensors"
    save_file({"alpha.weight": torch.randn(3, 3), "beta": torch.randn(5), "gamma.bias": torch.zeros(2)}, str(path))
    message = _refusal(path)
    assert "mystery.safetensors holds no Stable Diffusion UNet" in message
    assert "model.diffusion_model.input_blocks.0.0.weight" in message
    assert "3 tensors" in message and "alpha.weight" in message


def test_bare_flux_file_in_checkpoints_is_sent_to_unet_loader(tmp_path: Path) -> None:
    path = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(path))
    message = _refusal(path)
    assert "SD3/Flux diffusion model without text encoders or VAE" in message
    assert "models/diffusion_models" in message and "UNETLoader" in message


def test_unet_with_unsupported_input_channels_is_refused(tmp_path: Path) -> None:
    state = build_state_dict("sd1", inpaint=True)
    first = UNET_PREFIX + "input_blocks.0.0.weight"
    state[first] = state[first][:, :6].contiguous()  # no SD family has 6 (8 is InstructPix2Pix, now supported)
    message = _refusal(save_state_dict(state, tmp_path / "six.safetensors"))
    assert "6 input channels" in message and "InstructPix2Pix" in message


def test_unet_without_text_encoder_is_refused_with_found_layout(tmp_path: Path) -> None:
    state = {k: v for k, v in build_state_dict("sd1").items() if not k.startswith(TEXT_PREFIXES)}
    message = _refusal(save_state_dict(state, tmp_path / "unet_only.safetensors"))
    assert "unet_only.safetensors" in message and "expected SD1.x, SD2.x or SDXL layouts" in message


def _refusal(path: Path) -> str:
    with CheckpointFile(path) as ckpt, pytest.raises(UnsupportedModel) as info:
        detect_family(ckpt)
    return str(info.value)


# ----------------------------------------------------------------------------------- lazy reading


def _safetensors_header(path: Path) -> dict[str, dict]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_shapes_and_dtypes_match_the_header(tiny_file: BuildFile, dtype: str) -> None:
    path = tiny_file("sdxl", dtype=dtype)
    header = _safetensors_header(path)
    with CheckpointFile(path) as ckpt:
        assert sorted(ckpt.keys()) == sorted(header)
        assert ckpt.shapes() == {key: tuple(entry["shape"]) for key, entry in header.items()}
        assert {key: ckpt.dtype(key) for key in ckpt.keys()} == {
            key: SAFETENSORS_DTYPES[entry["dtype"]] for key, entry in header.items()}
        unet = ckpt.shapes(UNET_PREFIX)
        assert unet["input_blocks.0.0.weight"] == (64, 4, 3, 3)
        assert len(unet) == sum(key.startswith(UNET_PREFIX) for key in header)
        assert ckpt.has_prefix("conditioner.embedders.1.model.") and not ckpt.has_prefix("cond_stage_model.")
        assert V_PREDICTION_KEY not in ckpt and UNET_PREFIX + "out.2.weight" in ckpt


def test_ckpt_and_safetensors_hold_the_same_tensors(tiny_file: BuildFile) -> None:
    with CheckpointFile(tiny_file("sd2")) as safe, CheckpointFile(tiny_file("sd2", fmt="ckpt")) as pickled:
        assert sorted(pickled.keys()) == sorted(safe.keys())  # "state_dict" unwrapped, global_step dropped
        assert pickled.shapes() == safe.shapes()
        for key in safe.keys():
            assert pickled.dtype(key) == safe.dtype(key)
            assert torch.equal(pickled.load(key), safe.load(key)), key


def test_shapes_come_from_the_header_without_reading_data(tmp_path: Path) -> None:
    """A safetensors file declaring 1 GiB of tensor data (sparse on disk): names, shapes and dtypes are
    answered at once and without paging the data in; one small tensor still loads."""
    gib = 1 << 30
    header = {
        "huge.weight": {"dtype": "F32", "shape": [gib // 4], "data_offsets": [0, gib]},
        "small.bias": {"dtype": "F16", "shape": [4], "data_offsets": [gib, gib + 8]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + gib + 8)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with CheckpointFile(path) as ckpt:
        assert ckpt.shapes() == {"huge.weight": (gib // 4,), "small.bias": (4,)}
        assert (ckpt.dtype("huge.weight"), ckpt.dtype("small.bias")) == (torch.float32, torch.float16)
        assert "huge.weight" in ckpt and ckpt.has_prefix("huge.")
        small = ckpt.load("small.bias", torch.float32)
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert small.dtype == torch.float32 and torch.equal(small, torch.zeros(4))
    assert elapsed < 0.5, f"reading names and shapes took {elapsed:.2f}s"
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB"


def test_load_converts_floating_dtypes_only(tiny_file: BuildFile) -> None:
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    weight = UNET_PREFIX + "input_blocks.0.0.weight"
    with CheckpointFile(tiny_file("sd1", dtype="fp16")) as ckpt:
        stored = ckpt.load(weight)
        assert stored.dtype == torch.float16
        as_fp32 = ckpt.load(weight, torch.float32)
        assert as_fp32.dtype == torch.float32 and torch.equal(as_fp32, stored.float())
        assert ckpt.load(weight, torch.bfloat16).dtype == torch.bfloat16
        ids = ckpt.load(position_ids, torch.float32)
        assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77)[None])
        pairs = dict(ckpt.iter_prefix(VAE_PREFIX, torch.float32))
        assert set(pairs) == set(ckpt.shapes(VAE_PREFIX))
        assert all(tensor.dtype == torch.float32 for tensor in pairs.values())
    with CheckpointFile(tiny_file("sd1", dtype="bf16", fmt="ckpt")) as ckpt:
        assert ckpt.load(weight).dtype == torch.bfloat16
        assert ckpt.load(weight, torch.float16).dtype == torch.float16


# ----------------------------------------------------------------------------------- pickles

_PAYLOAD_RAN: list[str] = []


def _record_payload(marker: str) -> None:
    """What a malicious pickle would call; recording it lets the tests prove it never runs."""
    _PAYLOAD_RAN.append(marker)


class _Payload:
    """Pickles as a call to :func:`_record_payload` (the shape of an ``os.system`` reduce exploit)."""

    def __reduce__(self) -> tuple:
        return (_record_payload, ("payload executed",))


class _TrainerConfig:
    """An arbitrary class instance, as training scripts pickle next to the weights."""

    def __init__(self) -> None:
        self.lr = 1e-4


def test_pickle_with_code_payload_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": _Payload()}, str(path))
    _PAYLOAD_RAN.clear()
    with pytest.raises(UnsupportedModel) as info:
        CheckpointFile(path)
    assert _PAYLOAD_RAN == []
    message = str(info.value)
    assert "evil.ckpt" in message and "weights_only" in message and ".safetensors" in message


def test_pickle_with_class_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trainer.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "config": _TrainerConfig()}, str(path))
    with pytest.raises(UnsupportedModel, match="trainer.ckpt could not be read safely"):
        CheckpointFile(path)


@pytest.mark.parametrize("content", ["class_instance", "code_payload"])
def test_pickle_refusal_never_suggests_weights_only_false(tmp_path: Path, content: str) -> None:
    """torch's own error says re-running with weights_only=False "will likely succeed": Loom never passes that on,
    neither in the message nor in the traceback a client sees (the chained torch error)."""
    path = tmp_path / "trainer.ckpt"
    extra = _TrainerConfig() if content == "class_instance" else _Payload()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": extra}, str(path))
    with pytest.raises(UnsupportedModel) as info:
        CheckpointFile(path)
    message = str(info.value)
    assert "trainer.ckpt" in message and "refused as unsafe" in message and "convert it to .safetensors" in message
    assert "Unsupported global" in message  # what was refused
    shown = "".join(traceback.format_exception(info.value))
    for advice in ("weights_only=False", "will likely succeed", "set to `False`", "add_safe_globals", "trusted source"):
        assert advice not in shown, advice


def _legacy_pickle_with_payload(path: Path) -> Path:
    """A plain (non-zip) pickle: the legacy format torch.load also accepts."""
    path.write_bytes(pickle.dumps({"state_dict": {"w": torch.zeros(2)}, "hook": _Payload()}, protocol=2))
    return path


def test_legacy_pickle_with_payload_is_refused_without_running_it(tmp_path: Path) -> None:
    path = _legacy_pickle_with_payload(tmp_path / "legacy_evil.ckpt")
    _PAYLOAD_RAN.clear()
    with pytest.raises(UnsupportedModel, match="legacy_evil.ckpt could not be read safely"):
        CheckpointFile(path)
    assert _PAYLOAD_RAN == []


def test_corrupt_ckpt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(b"\x80\x02garbage" * 64)
    with pytest.raises(UnsupportedModel, match="truncated.ckpt could not be read safely"):
        CheckpointFile(path)


@pytest.mark.parametrize("cut", [0, 100, 2])
def test_truncated_or_empty_safetensors_is_refused(tmp_path: Path, tiny_file: BuildFile, cut: int) -> None:
    data = tiny_file("sd1").read_bytes()
    path = tmp_path / "half-download.safetensors"
    path.write_bytes(data[: len(data) // cut] if cut else b"")
    with pytest.raises(UnsupportedModel, match="half-download.safetensors is not a readable .safetensors file"):
        CheckpointFile(path)


def test_plain_tensor_dict_ckpt_loads(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"a.weight": torch.ones(2, 3, dtype=torch.float16), "b": torch.arange(4)}, str(path))
    with CheckpointFile(path) as ckpt:
        assert sorted(ckpt.keys()) == ["a.weight", "b"]
        assert ckpt.shape("a.weight") == (2, 3) and ckpt.dtype("a.weight") == torch.float16
        assert torch.equal(ckpt.load("a.weight", torch.float32), torch.ones(2, 3))


def test_state_dict_wrapper_is_unwrapped(tmp_path: Path) -> None:
    path = build_checkpoint(tmp_path / "wrapped.ckpt", "sd1", fmt="ckpt")
    with CheckpointFile(path) as ckpt:
        assert "state_dict" not in ckpt and "global_step" not in ckpt
        assert sorted(ckpt.keys()) == sorted(build_state_dict("sd1"))
        assert detect_family(ckpt) == ModelFamily("sd1", "eps", 4)


def test_pickle_without_a_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], str(path))
    with pytest.raises(UnsupportedModel, match="list.ckpt does not hold a state dict"):
        CheckpointFile(path)


# ----------------------------------------------------------------------------------- the parts load and run


def _normalised(key: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.)", "N", key)


def test_tiny_sd1_uses_real_sd15_key_names_and_dtypes() -> None:
    real: dict[str, tuple[str, str]] = {}
    for line in SD15_CHECKPOINT_KEYS.read_text().splitlines():
        key, dtype, shape = line.split("\t")
        real[key] = (dtype, shape)
    real_patterns = {_normalised(key) for key in real}
    tiny = build_state_dict("sd1")
    assert {_normalised(key) for key in tiny} <= real_patterns
    assert {key.split(".", 1)[0] for key in tiny} == {key.split(".", 1)[0] for key in real}
    for key in ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_ids"):
        assert real[key][0] == {torch.float16: "F16", torch.int64: "I64"}[tiny[key].dtype]
        assert tiny[key].shape[0] == json.loads(real[key][1])[0]  # vocabulary 49408 / 1 row of 77 ids


@pytest.mark.parametrize(("family", "inpaint"), [(f, False) for f in FAMILIES] + [("sd1", True)])
def test_parts_load_and_run(tiny_file: BuildFile, family: str, inpaint: bool) -> None:
    """UNet, VAE and text encoder configs are inferred from the file, load, and give finite outputs."""
    with CheckpointFile(tiny_file(family, inpaint=inpaint)) as ckpt:
        config = UNetConfig.from_state_dict(ckpt.shapes(UNET_PREFIX))
        assert config == unet_config(family, inpaint=inpaint)
        with torch.device("meta"):
            unet = UNetModel(config)
        load_weights(unet, ckpt.iter_prefix(UNET_PREFIX), dtype=torch.float32)

        vae_config = VAEConfig.from_state_dict(ckpt.shapes(VAE_PREFIX))
        assert vae_config == VAE_CONFIG and vae_config.downscale == 8
        with torch.device("meta"):
            vae = AutoencoderKL(vae_config)
        load_weights(vae, ckpt.iter_prefix(VAE_PREFIX), dtype=torch.float32, adapt=adapt_vae_weight)
        text_state = {key: ckpt.load(key) for key in ckpt.keys() if key.startswith(TEXT_PREFIXES)}

    encoder = load_text_encoder(text_state, dtype=torch.float32)  # the family is detected from the keys
    assert encoder.family == family
    assert (encoder.cond_dim, encoder.pooled_dim) == (context_dim(family), pooled_dim(family))
    cond, pooled = encoder.encode_text("a (photo:1.2) of a cat")  # the real tokenizer and prompt weighting
    assert cond.shape == (1, 77, context_dim(family)) and pooled.shape == (1, pooled_dim(family))
    assert torch.isfinite(cond).all() and torch.isfinite(pooled).all()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, config.in_channels, 8, 8, generator=generator)
    y = {"sdxl": lambda: sdxl_adm(pooled, 64, 64), "sdxl_refiner": lambda: sdxl_refiner_adm(pooled, 64, 64)}
    adm = y[family]().expand(2, -1) if family in y else None
    with torch.no_grad():
        out = unet(x, torch.tensor([999.0, 10.0]), cond.expand(2, -1, -1), adm)
        image = vae.decode(out)
    assert out.shape == (2, 4, 8, 8) and image.shape == (2, 3, 64, 64)
    for tensor in (out, image):
        assert torch.isfinite(tensor).all()
        assert 0.05 < float(tensor.std()) < 20.0
    assert not torch.allclose(out[0], out[1])  # the timestep matters


# ----------------------------------------------------------------------------------- the builders


def test_builds_are_deterministic_per_seed() -> None:
    first, again, other = (build_state_dict("sd1", seed=s) for s in (0, 0, 1))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first[UNET_PREFIX + "out.2.weight"], other[UNET_PREFIX + "out.2.weight"])


def test_builder_rejects_what_it_cannot_build(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sd2 only"):
        build_state_dict("sd1", v_prediction=True)
    with pytest.raises(ValueError, match="unknown family"):
        build_state_dict("sd3")
    with pytest.raises(ValueError, match="suffixes"):
        build_checkpoint(tmp_path / "model.safetensors", fmt="ckpt")
