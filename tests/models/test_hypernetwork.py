"""Hypernetwork files (AUTOMATIC1111's format, written here) parsed into MLPs, the MLPs against the
formula and against A1111's module layout, and the attention patch against a hand-computed attention."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.backend.attention import BasicTransformerBlock, attention
from engine.backend.guidance import gather_hooks
from engine.backend.hypernetwork import HyperMLP, HypernetworkPatch, apply_hypernetwork
from engine.backend.unet import PatchContext
from engine.models.handles import FileRef
from engine.models.hypernetwork import HypernetworkFileError, parse_hypernetwork, read_hypernetwork
from tests.models.hypernetwork_files import (
    Settings,
    hypernetwork_dict,
    make_mlps,
    module_state,
    write_pt,
    write_safetensors,
)

SETTINGS = [
    Settings(),
    Settings(activation="relu", layer_norm=True),
    Settings((1, 1.5, 0.5, 1), "leakyrelu", use_dropout=True, last_layer_dropout=True),
    Settings((1, 2, 2, 1), "swish", layer_norm=True, use_dropout=True),
    Settings((1, 2, 1), "tanh", activate_output=True),
    Settings((1, 1.5, 0.5, 1), "mish", layer_norm=True, activate_output=True, use_dropout=True),
    Settings((1, 2, 1), "elu"),
    Settings((1, 2, 1), "sigmoid", layer_norm=True),
    Settings((1, 2, 1), "softsign"),
    Settings((1, 3, 1), "gelu", layer_norm=True),
]


def _layer_norm(h: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    mean = h.mean(-1, keepdim=True)
    var = ((h - mean) ** 2).mean(-1, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5) * gain + shift


def test_the_mlp_follows_the_formula_with_relu_and_layer_norm() -> None:
    """[1, 2, 1], relu, layer norm: linear.0 Linear, (1 ReLU), linear.2 LayerNorm, linear.3 Linear,
    linear.4 LayerNorm; no activation after the last Linear."""
    s = Settings((1, 2, 1), "relu", layer_norm=True)
    data = hypernetwork_dict(make_mlps((16,), s), s)
    sd = data[16][0]
    assert sorted(sd) == sorted(f"linear.{i}.{p}" for i in (0, 2, 3, 4) for p in ("weight", "bias"))
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    h = torch.relu(x @ sd["linear.0.weight"].T + sd["linear.0.bias"])
    h = _layer_norm(h, sd["linear.2.weight"], sd["linear.2.bias"])
    h = h @ sd["linear.3.weight"].T + sd["linear.3.bias"]
    expected = _layer_norm(h, sd["linear.4.weight"], sd["linear.4.bias"])
    mlp_k, _ = parse_hypernetwork(data, "f.pt").modules[16]
    torch.testing.assert_close(mlp_k(x), expected, atol=1e-5, rtol=1e-5)
    key, _ = apply_hypernetwork(parse_hypernetwork(data, "f.pt"), x, x, 0.7)
    torch.testing.assert_close(key, x + expected * 0.7, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: f"{s.activation}-{s.layer_structure}-ln{int(s.layer_norm)}")
def test_the_mlps_equal_a1111s_module_layout(s: Settings) -> None:
    mlps = make_mlps((16, 24), s, seed=2)
    parsed = parse_hypernetwork(hypernetwork_dict(mlps, s), "f.pt")
    assert parsed.dims == (16, 24)
    assert (parsed.activation, parsed.layer_norm) == (s.activation, s.layer_norm)
    assert parsed.layer_structure == tuple(float(v) for v in s.layer_structure)
    for dim, (ref_k, ref_v) in mlps.items():
        x = torch.randn(3, 7, dim, generator=torch.Generator().manual_seed(dim))
        mlp_k, mlp_v = parsed.modules[dim]
        with torch.no_grad():
            torch.testing.assert_close(mlp_k(x), ref_k(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mlp_v(x), ref_v(x), atol=1e-5, rtol=1e-5)


def _outputs(mlp: HyperMLP, dim: int) -> torch.Tensor:
    return mlp(torch.linspace(-2, 2, dim * 4).reshape(4, dim))


@pytest.mark.parametrize("s", SETTINGS[:4], ids=lambda s: s.activation)
def test_pt_and_safetensors_files_read_the_same(tmp_path: Path, s: Settings) -> None:
    data = hypernetwork_dict(make_mlps((16, 32), s, seed=3), s, name="my-hn")
    from_pt = read_hypernetwork(FileRef.of(write_pt(tmp_path / "a.pt", data)))
    from_st = read_hypernetwork(FileRef.of(write_safetensors(tmp_path / "a.safetensors", data)))
    for hn in (from_pt, from_st):
        assert hn.name == "my-hn" and hn.dims == (16, 32) and hn.activation == s.activation
        assert hn.metadata["sd_checkpoint"] == "abcdef12"
    for dim in (16, 32):
        for a, b in zip(from_pt.modules[dim], from_st.modules[dim], strict=True):
            assert torch.equal(_outputs(a, dim), _outputs(b, dim))


def test_parsed_files_are_cached_and_an_edited_file_is_read_again(tmp_path: Path) -> None:
    s = Settings()
    path = write_pt(tmp_path / "c.pt", hypernetwork_dict(make_mlps((16,), s), s))
    first = read_hypernetwork(FileRef.of(path))
    assert read_hypernetwork(FileRef.of(path)) is first
    write_pt(path, hypernetwork_dict(make_mlps((16, 24), s, seed=9), s))
    assert read_hypernetwork(FileRef.of(path)).dims == (16, 24)


def test_old_linear1_linear2_names_and_missing_metadata() -> None:
    s = Settings()
    mlps = make_mlps((16,), s, seed=4)
    old = {16: tuple({k.replace("linear.0.", "linear1.").replace("linear.1.", "linear2."): v
                      for k, v in module_state(m).items()} for m in mlps[16])}
    parsed = parse_hypernetwork(old, "old.pt")
    assert parsed.name == "old" and parsed.activation == "linear"
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(parsed.modules[16][1](x), mlps[16][1](x))


def _broken(change: dict[str, Any] | None = None, **settings: Any) -> dict[Any, Any]:
    s = Settings(**settings)
    data = hypernetwork_dict(make_mlps((16,), s), s)
    data.update(change or {})
    return data


def _without(data: dict[Any, Any], key: str) -> dict[Any, Any]:
    data[16][0].pop(key)
    return data


@pytest.mark.parametrize(("data", "words"), [
    (_broken({"activation_func": "swoosh"}), ["bad.pt", "unknown activation_func 'swoosh'", "relu"]),
    (_broken({"layer_structure": [1, 2, 2]}), ["bad.pt", "must start and end with 1"]),
    (_broken({"layer_structure": [1, 3, 1]}), ["bad.pt", "width 16", "asks for 48"]),
    (_broken({"layer_structure": [1, 2, 1, 1]}), ["bad.pt", "asks for 3"]),
    (_broken({"is_layer_norm": True}), ["bad.pt", "lacks a LayerNorm"]),
    (_broken({"is_layer_norm": False}, layer_norm=True), ["bad.pt", "unexpected 1-D weight"]),
    (_without(_broken(), "linear.1.bias"), ["bad.pt", "key MLP of width 16", "missing"]),
    (_broken({16: ({"linear.0.weight": torch.zeros(32, 8), "linear.0.bias": torch.zeros(32)}, {})}),
     ["bad.pt", "do not chain"]),
    (_broken({16: ({"net.0.weight": torch.zeros(16, 16)}, {})}), ["bad.pt", "unexpected entry 'net.0.weight'"]),
    (_broken({16: "nothing"}), ["bad.pt", "two state dicts"]),
    ({"name": "empty", "activation_func": "relu"}, ["bad.pt", "holds no layers"]),
], ids=["activation", "structure-ends", "structure-width", "structure-depth", "norm-missing", "norm-unexpected",
        "bias-missing", "shapes", "key-names", "not-a-pair", "no-widths"])
def test_broken_files_are_refused_with_the_file_and_the_problem(data: dict[Any, Any], words: list[str]) -> None:
    with pytest.raises(HypernetworkFileError) as info:
        parse_hypernetwork(data, "bad.pt")
    for word in words:
        assert word in str(info.value)


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("code ran",))


def test_a_pickle_that_needs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"name": _Payload()}, handle, protocol=2)
    with pytest.raises(HypernetworkFileError, match="evil.pt could not be read safely"):
        read_hypernetwork(FileRef.of(path))


# ------------------------------------------------------------------------------- the attention patch

DIM, CONTEXT, HEADS = 32, 24, 2


def _block() -> BasicTransformerBlock:
    torch.manual_seed(0)
    block = BasicTransformerBlock(DIM, HEADS, DIM // HEADS, CONTEXT).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.2)
    return block


def _run(block: BasicTransformerBlock, x: torch.Tensor, context: torch.Tensor, patches: list[Any]) -> torch.Tensor:
    hooks = gather_hooks(patches, None)
    ctx = PatchContext(hooks.unet_patches, torch.zeros(x.shape[0]), (x.shape[0], 4, 4, 4), DIM)
    with torch.no_grad():
        return block(x, context, ctx)


def _by_hand(block: BasicTransformerBlock, x: torch.Tensor, context: torch.Tensor, mlps: dict[int, Any],
             strength: float) -> torch.Tensor:
    """The block with each attention's key/value input x replaced by x + mlp(x) * strength."""
    def attend(layer: Any, n: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        k_in = v_in = source
        if source.shape[-1] in mlps:
            mlp_k, mlp_v = mlps[source.shape[-1]]
            k_in, v_in = source + mlp_k(source) * strength, source + mlp_v(source) * strength
        out = attention(layer.to_q(n), layer.to_k(k_in), layer.to_v(v_in), layer.heads)
        return layer.to_out[0](out)

    with torch.no_grad():
        n = block.norm1(x)
        x = attend(block.attn1, n, n) + x
        x = attend(block.attn2, block.norm2(x), context) + x
        return block.ff(block.norm3(x)) + x


@pytest.mark.parametrize("dims", [(CONTEXT,), (DIM,), (CONTEXT, DIM)], ids=["cross", "self", "both"])
def test_the_patched_attention_equals_the_attention_of_transformed_inputs(dims: tuple[int, ...]) -> None:
    s = Settings((1, 2, 1), "relu", layer_norm=True)
    mlps = make_mlps(dims, s, seed=5)
    patch = HypernetworkPatch(parse_hypernetwork(hypernetwork_dict(mlps, s), "f.pt"), 0.8)
    block = _block()
    generator = torch.Generator().manual_seed(6)
    x, context = torch.randn(2, 16, DIM, generator=generator), torch.randn(2, 7, CONTEXT, generator=generator)
    patched = _run(block, x, context, [patch])
    torch.testing.assert_close(patched, _by_hand(block, x, context, mlps, 0.8), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(patched, _run(block, x, context, []), atol=1e-3)


def test_two_hypernetworks_chain_and_strength_zero_or_removal_is_bit_exact() -> None:
    s = Settings((1, 2, 1), "tanh")
    first, second = make_mlps((CONTEXT,), s, seed=7), make_mlps((CONTEXT,), s, seed=8)
    patch_a = HypernetworkPatch(parse_hypernetwork(hypernetwork_dict(first, s), "a.pt"), 1.0)
    patch_b = HypernetworkPatch(parse_hypernetwork(hypernetwork_dict(second, s), "b.pt"), 0.5)
    block = _block()
    x, context = torch.randn(1, 9, DIM), torch.randn(1, 5, CONTEXT)
    plain = _run(block, x, context, [])
    with torch.no_grad():
        plain_direct = block(x, context)
    assert torch.equal(_run(block, x, context, [dataclasses.replace(patch_a, strength=0.0)]), plain)
    assert torch.equal(plain, plain_direct)
    assert gather_hooks([dataclasses.replace(patch_a, strength=0.0)], None).unet_patches == {}
    chained = _run(block, x, context, [patch_a, patch_b])
    with torch.no_grad():
        mlp_ka, mlp_va = first[CONTEXT]
        mlp_kb, mlp_vb = second[CONTEXT]
        k = context + mlp_ka(context)
        v = context + mlp_va(context)
        k, v = k + mlp_kb(k) * 0.5, v + mlp_vb(v) * 0.5
        n = block.norm1(x)
        h = block.attn1(n) + x
        h = block.attn2.to_out[0](attention(block.attn2.to_q(block.norm2(h)), block.attn2.to_k(k),
                                            block.attn2.to_v(v), HEADS)) + h
        expected = block.ff(block.norm3(h)) + h
    torch.testing.assert_close(chained, expected, atol=1e-5, rtol=1e-5)


def test_the_patch_casts_to_the_tokens_dtype() -> None:
    s = Settings((1, 2, 1), "relu")
    mlps = make_mlps((CONTEXT,), s, seed=10)
    patch = HypernetworkPatch(parse_hypernetwork(hypernetwork_dict(mlps, s), "f.pt"), 1.0)
    block = _block().to(torch.bfloat16)
    x, context = torch.randn(1, 4, DIM, dtype=torch.bfloat16), torch.randn(1, 3, CONTEXT, dtype=torch.bfloat16)
    out = _run(block, x, context, [patch])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
