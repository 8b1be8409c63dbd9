"""Hooks: LoRAs scheduled over the steps and limited to some conditioning. Keyframes switch at the step ComfyUI's
rule gives; a hook on every entry samples exactly as the same LoRA loaded on the model; a hook on the positive
only patches the UNet for the positive's forward; the weights come back bit-exactly; default entries fill what
the others leave; SetClipHooks encodes with the LoRA's CLIP strength, per keyframe range when scheduled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.backend.conditioning import CondSpec, _with_defaults
from engine.backend.hook_schedule import HookRunner
from engine.backend.model_sampling import ModelSampling
from engine.backend.schedules import sigmas_for
from engine.executor import Executor
from engine.models.handles import ClipHandle, FileRef, ModelHandle, WeightPatch
from engine.models.hooks import HookGroup, HookKeyframe, HookKeyframes, WeightHook, clip_schedule, interpolate
from engine.models.loaders import CheckpointFile, detect_family
from engine.sdk import RunContext
from nodes.conditioning import CLIPTextEncode
from nodes.hooks import (
    CombineHooks2,
    ConditioningSetDefaultCombine,
    ConditioningSetProperties,
    ConditioningTimestepsRange,
    CreateHookKeyframe,
    CreateHookKeyframesInterpolated,
    CreateHookLora,
    CreateHookModelAsLora,
    PairConditioningSetProperties,
    SetClipHooks,
    SetHookKeyframes,
)
from nodes.sampling import KSampler
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import make_executor, node_context

Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
UNET_TARGET = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TEXT_TARGET = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hooks")
    build_checkpoint(root / "checkpoints" / "tiny.safetensors", "sd1")
    build_checkpoint(root / "checkpoints" / "other.safetensors", "sd1", seed=1)
    generator = torch.Generator().manual_seed(4)
    lora = {}
    for target, width in ((UNET_TARGET, 32), (TEXT_TARGET, 64)):
        lora[f"{target}.lora_up.weight"] = torch.randn(width, 4, generator=generator) * 0.3
        lora[f"{target}.lora_down.weight"] = torch.randn(4, width, generator=generator) * 0.3
    (root / "loras").mkdir()
    save_file(lora, str(root / "loras" / "hook.safetensors"))
    return root


@pytest.fixture
def executor(root: Path, tmp_path: Path) -> Executor:
    return make_executor(tmp_path, root)


@pytest.fixture
def q_seen(executor: Executor) -> Iterator[list[torch.Tensor]]:
    """The attn1.to_q weight of input block 1 at every UNet forward (copies)."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if type(module).__name__ == "UNetModel":
            seen.append(module.get_parameter(Q).detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield seen
    handle.remove()


def _handles(root: Path) -> tuple[ModelHandle, ClipHandle]:
    path = root / "checkpoints" / "tiny.safetensors"
    with CheckpointFile(path) as ckpt:
        family = detect_family(ckpt)
    return ModelHandle(FileRef.of(path), family), ClipHandle(FileRef.of(path), family)


def _conds(ctx: RunContext, clip: ClipHandle) -> tuple[list[Any], list[Any]]:
    [positive] = CLIPTextEncode().run(ctx, "a red circle", clip)
    [negative] = CLIPTextEncode().run(ctx, "", clip)
    return positive, negative


def _sample(ctx: RunContext, model: ModelHandle, positive: list[Any], negative: list[Any], steps: int = 4,
            cfg: float = 5.0) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    [out] = KSampler().run(ctx, model, 3, steps, cfg, "euler", "normal", positive, negative, latent, 1.0)
    samples: torch.Tensor = out["samples"]
    return samples


def _lora_hooks(ctx: RunContext, strength_model: float = 0.7, strength_clip: float = 0.0) -> HookGroup:
    [group] = CreateHookLora().run(ctx, "hook.safetensors", strength_model, strength_clip)
    return group


def test_a_hook_on_every_entry_samples_as_the_lora_on_the_model(executor: Executor, root: Path) -> None:
    ctx = node_context(executor)
    model, clip = _handles(root)
    positive, negative = _conds(ctx, clip)
    group = _lora_hooks(ctx)
    pos, neg = PairConditioningSetProperties().run(ctx, positive, negative, 1.0, "default", hooks=group)
    hooked = _sample(ctx, model, pos, neg)
    lora = model.with_patch(WeightPatch(FileRef.of(root / "loras" / "hook.safetensors"), 0.7))
    assert torch.equal(hooked, _sample(ctx, lora, positive, negative))
    assert not torch.equal(hooked, _sample(ctx, model, positive, negative))
    original = _handles(root)[0]
    with CheckpointFile(Path(original.checkpoint.path)) as ckpt:
        stored = ckpt.load("model.diffusion_model." + Q, torch.float32)
    assert torch.equal(executor.models.unet(model).get_parameter(Q).detach(), stored)  # restored exactly


def test_a_hook_on_the_positive_patches_only_its_forward(executor: Executor, root: Path,
                                                         q_seen: list[torch.Tensor]) -> None:
    ctx = node_context(executor)
    model, clip = _handles(root)
    positive, negative = _conds(ctx, clip)
    [hooked] = ConditioningSetProperties().run(ctx, positive, 1.0, "default", hooks=_lora_hooks(ctx))
    _sample(ctx, model, hooked, negative, steps=2)
    base = executor.models.unet(model).get_parameter(Q).detach().clone()
    assert len(q_seen) == 4  # per step: the negative (plain) then the positive (hooked) forward
    assert torch.equal(q_seen[0], base) and torch.equal(q_seen[2], base)
    assert not torch.equal(q_seen[1], base) and torch.equal(q_seen[1], q_seen[3])


def test_keyframes_switch_the_hook_off_at_their_start(executor: Executor, root: Path,
                                                      q_seen: list[torch.Tensor]) -> None:
    ctx = node_context(executor)
    model, clip = _handles(root)
    positive, negative = _conds(ctx, clip)
    [keyframes] = CreateHookKeyframe().run(ctx, 1.0, 0.0)
    [keyframes] = CreateHookKeyframe().run(ctx, 0.0, 0.5, keyframes)
    [group] = SetHookKeyframes().run(ctx, _lora_hooks(ctx), keyframes)
    pos, neg = PairConditioningSetProperties().run(ctx, positive, negative, 1.0, "default", hooks=group)
    _sample(ctx, model, pos, neg, steps=6)
    base = executor.models.unet(model).get_parameter(Q).detach().clone()
    on = [not torch.equal(q, base) for q in q_seen]
    # 6 steps, one batched forward each; start_percent 0.5 is sigma at t=499: the steps whose sigma is at or
    # below it (after the first, guaranteed, step) run without the LoRA.
    sampling = ModelSampling.from_betas()
    half = float(sampling.percent_to_sigma(0.5))
    schedule = sigmas_for(sampling, "normal", "euler", 6)[:-1]
    expected = [True] + [float(s) > half for s in schedule[1:]]
    assert on == expected and on.count(False) >= 2


def test_the_runner_follows_comfyui_keyframe_rules() -> None:
    applied: list[tuple[tuple[Any, float], ...]] = []
    to_sigma = {0.0: 10.0, 0.25: 7.5, 0.5: 5.0, 0.75: 2.5}
    runner = HookRunner(applied.append, lambda p: to_sigma[p])
    file = FileRef("/x.safetensors", 1, 1)
    frames = HookKeyframes()
    for strength, start, guarantee in ((1.0, 0.0, 1), (0.5, 0.25, 0), (0.25, 0.5, 0), (0.0, 0.75, 2)):
        frames = frames.with_keyframe(HookKeyframe(strength, start, guarantee))
    group = HookGroup((WeightHook("a", file, 2.0, 1.0, frames),))
    strengths = []
    for sigma in (10.0, 9.0, 4.0, 3.0, 1.0, 1.0, 0.5):
        runner.step(sigma, [group])
        runner.use(group)
        strengths.append(runner.patches(group))
    # 10: first keyframe (guaranteed 1 step); 9: none starts at >= 9 yet; 4: past 0.25 and 0.5 (no guarantee, so
    # on to the last reached); 3: still 0.25's; 1: 0.75's multiplier 0 (no patch); the repeated sigma changes nothing.
    two, half = (file, 2.0, "lora"), (file, 0.5, "lora")
    assert strengths == [(two,), (two,), (half,), (half,), (), (), ()]
    assert applied == [(two,), (half,), ()]
    runner.finish()
    assert applied[-1] == ()


def test_interpolated_keyframes_and_clip_schedule_follow_the_formulas(executor: Executor) -> None:
    ctx = node_context(executor)
    assert interpolate(0.0, 1.0, 5, "linear") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert interpolate(0.0, 1.0, 3, "ease_in") == [0.0, 0.25, 1.0]
    assert interpolate(0.0, 1.0, 3, "ease_out") == [0.0, 0.75, 1.0]
    assert interpolate(1.0, 0.0, 3, "ease_in_out") == pytest.approx([1.0, 0.5, 0.0])
    [frames] = CreateHookKeyframesInterpolated().run(ctx, 1.0, 0.0, "linear", 0.2, 0.6, 3)
    assert [(k.strength, k.start_percent, k.guarantee_steps) for k in frames.keyframes] == [
        (1.0, 0.2, 1), (0.5, pytest.approx(0.4), 0), (0.0, pytest.approx(0.6), 0)]
    file = FileRef("/x.safetensors", 1, 1)
    first = WeightHook("a", file, keyframes=HookKeyframes((HookKeyframe(1.0, 0.0), HookKeyframe(0.5, 0.5))))
    second = WeightHook("b", file, keyframes=HookKeyframes((HookKeyframe(2.0, 0.25),)))
    schedule = clip_schedule(HookGroup((first, second)))
    assert schedule == [((0.0, 0.25), {"a": 1.0, "b": 1.0}), ((0.25, 0.5), {"a": 1.0, "b": 2.0}),
                        ((0.5, 1.0), {"a": 0.5, "b": 2.0})]
    assert ConditioningTimestepsRange().run(ctx, 0.2, 0.7) == ((0.2, 0.7), (0.0, 0.2), (0.7, 1.0))
    [both] = CombineHooks2().run(ctx, hooks_A=HookGroup((first,)), hooks_B=HookGroup((first, second)))
    assert [hook.ref for hook in both.hooks] == ["a", "b"]  # a hook in both counts once
    assert CombineHooks2().run(ctx) == (None,)


def test_default_entries_fill_only_what_the_others_leave() -> None:
    left = torch.zeros(1, 8, 8)
    left[..., :4] = 1.0
    masked = CondSpec(torch.zeros(1, 2, 4), mask=left)
    default = CondSpec(torch.ones(1, 2, 4), default=True, strength=3.0)
    like = torch.zeros(1, 4, 8, 8)
    kept = _with_defaults([masked, default], like)
    assert kept[0] is masked and kept[1].default and kept[1].strength == 1.0
    assert torch.equal(kept[1].mask, 1 - left)  # the right half, whatever the default's own strength
    everywhere = CondSpec(torch.zeros(1, 2, 4))
    assert _with_defaults([everywhere, default], like) == [everywhere]  # nothing left to fill


def test_default_combine_marks_entries_and_samples(executor: Executor, root: Path) -> None:
    ctx = node_context(executor)
    model, clip = _handles(root)
    positive, negative = _conds(ctx, clip)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    [masked] = ConditioningSetProperties().run(ctx, positive, 1.0, "default", mask=mask, hooks=_lora_hooks(ctx))
    [combined] = ConditioningSetDefaultCombine().run(ctx, masked, positive)
    assert [extras.get("default", False) for _, extras in combined] == [False, True]
    result = _sample(ctx, model, combined, negative, steps=2)
    assert result.shape == (1, 4, 8, 8) and torch.isfinite(result).all()


def test_set_clip_hooks_encodes_with_the_lora_and_schedules_ranges(executor: Executor, root: Path) -> None:
    ctx = node_context(executor)
    _, clip = _handles(root)
    group = _lora_hooks(ctx, strength_model=0.5, strength_clip=0.8)
    [hooked_clip] = SetClipHooks().run(ctx, clip, True, False, group)
    [encoded] = CLIPTextEncode().run(ctx, "a red circle", hooked_clip)
    with_lora = clip.with_patch(WeightPatch(FileRef.of(root / "loras" / "hook.safetensors"), 0.8))
    [expected] = CLIPTextEncode().run(ctx, "a red circle", with_lora)
    [plain] = CLIPTextEncode().run(ctx, "a red circle", clip)
    assert torch.equal(encoded[0][0], expected[0][0]) and not torch.equal(encoded[0][0], plain[0][0])
    assert encoded[0][1]["hooks"] == group
    [frames] = CreateHookKeyframe().run(ctx, 1.0, 0.0)
    [frames] = CreateHookKeyframe().run(ctx, 0.0, 0.5, frames)
    [scheduled_clip] = SetClipHooks().run(ctx, clip, False, True, SetHookKeyframes().run(ctx, group, frames)[0])
    [entries] = CLIPTextEncode().run(ctx, "a red circle", scheduled_clip)
    assert [(e[1]["clip_start_percent"], e[1]["clip_end_percent"]) for e in entries] == [(0.0, 0.5), (0.5, 1.0)]
    assert torch.equal(entries[0][0], expected[0][0]) and torch.equal(entries[1][0], plain[0][0])
    assert "hooks" not in entries[0][1]


def test_a_checkpoint_as_a_hook_moves_the_weights_toward_it(executor: Executor, root: Path) -> None:
    """CreateHookModelAsLora: at strength s every weight is original + s * (checkpoint's - original), after the
    LoRAs before it; strength 1 on the UNet and the CLIP samples as the other checkpoint itself."""
    ctx = node_context(executor)
    model, clip = _handles(root)
    other_model, other_clip = (handle.__class__(FileRef.of(root / "checkpoints" / "other.safetensors"), handle.family)
                               for handle in (model, clip))
    models = executor.models
    base = {name: p.detach().clone() for name, p in models.unet(model).named_parameters()}
    target = {name: p.detach().clone() for name, p in models.unet(other_model).named_parameters()}
    other_ref = FileRef.of(root / "checkpoints" / "other.safetensors")
    half = {name: p.detach().clone()
            for name, p in models.unet(model.with_patch(WeightPatch(other_ref, 0.5, "model"))).named_parameters()}
    for name in base:
        torch.testing.assert_close(half[name], base[name] + 0.5 * (target[name] - base[name]), rtol=1e-6, atol=1e-7)
    lora = WeightPatch(FileRef.of(root / "loras" / "hook.safetensors"), 0.7)
    with_lora = {name: p.detach().clone() for name, p in models.unet(model.with_patch(lora)).named_parameters()}
    both = models.unet(model.with_patches((lora, WeightPatch(other_ref, 1.0, "model")))).get_parameter(Q).detach()
    torch.testing.assert_close(both, target[Q] + (with_lora[Q] - base[Q]), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(p.detach(), base[name]) for name, p in models.unet(model).named_parameters())

    [group] = CreateHookModelAsLora().run(ctx, "other.safetensors", 1.0, 1.0)
    [hooked_clip] = SetClipHooks().run(ctx, clip, True, False, group)
    positive, negative = _conds(ctx, hooked_clip)
    hooked = _sample(ctx, model, positive, negative)
    expected = _sample(ctx, other_model, *_conds(ctx, other_clip))
    torch.testing.assert_close(hooked, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(hooked, _sample(ctx, model, *_conds(ctx, clip)), atol=1e-3)
