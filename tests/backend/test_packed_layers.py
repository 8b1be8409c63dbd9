"""oneDNN-packed convolution and linear layers: same outputs, dense weights back bit for bit, loud misuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backend.attention import SpatialTransformer
from engine.backend.cast_weights import cast_at_forward
from engine.backend.packed_layers import (
    PackedConv2d,
    PackedLinear,
    is_packed,
    pack_layers,
    packing_available,
    unpack_layers,
)

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed operators")


class Layers(nn.Module):
    """One of each kind of layer packing handles, and one it must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.strided = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.pointwise = nn.Conv2d(16, 12, 1)
        self.linear = nn.Linear(12, 20)
        self.no_bias = nn.Linear(20, 6, bias=False)
        self.reflect = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect")

    def forward(self, x: Tensor) -> Tensor:
        h = self.pointwise(F.silu(self.grouped(self.strided(self.conv3(x)))))
        tokens = self.no_bias(F.gelu(self.linear(h.permute(0, 2, 3, 1))))
        return self.reflect(tokens.permute(0, 3, 1, 2))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return module.eval()


def test_packed_outputs_equal_dense_and_unpacking_is_bit_exact() -> None:
    model = seeded(Layers())
    x = torch.randn(2, 8, 12, 12, generator=torch.Generator().manual_seed(1))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.inference_mode():
        expected = model(x)
    assert pack_layers(model) == 6  # all but the reflect-padded conv
    assert is_packed(model)
    assert isinstance(model.conv3, PackedConv2d) and isinstance(model.linear, PackedLinear)
    assert type(model.reflect) is nn.Conv2d
    with torch.inference_mode():
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert pack_layers(model) == 0  # already packed
    assert unpack_layers(model) == 6
    assert not is_packed(model) and type(model.conv3) is nn.Conv2d and type(model.linear) is nn.Linear
    for name, parameter in model.named_parameters():
        assert parameter.device.type == "cpu"
        assert torch.equal(parameter, before[name]), name
    with torch.inference_mode():
        assert torch.equal(model(x), expected)


def test_a_packed_layer_reads_dense_and_holds_no_dense_copy() -> None:
    model = seeded(Layers())
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    parameter = model.conv3.weight
    pack_layers(model)
    # the weight attribute and the state dict give the values; the parameter itself is a meta placeholder
    assert torch.equal(model.conv3.weight, original["conv3.weight"])
    assert torch.equal(model.pointwise.weight, original["pointwise.weight"])
    state = model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in original.items())
    shapes = {name: (tuple(p.shape), p.dtype) for name, p in model.named_parameters()}
    assert shapes == {name: (tuple(v.shape), v.dtype) for name, v in original.items()}
    assert model.conv3._parameters["weight"] is not None and model.conv3._parameters["weight"].is_meta
    assert parameter.numel() == 0  # the dense storage was freed
    with pytest.raises((NotImplementedError, RuntimeError)):
        model.conv3._parameters["weight"].sum().item()
    unpack_layers(model)
    assert model.conv3.weight is parameter  # the same Parameter object comes back
    assert torch.equal(parameter, original["conv3.weight"])


def test_unpack_only_the_named_layers() -> None:
    model = seeded(Layers())
    pack_layers(model)
    assert unpack_layers(model, {"linear.weight", "strided.weight"}) == 2
    assert type(model.linear) is nn.Linear and type(model.strided) is nn.Conv2d
    assert isinstance(model.conv3, PackedConv2d)
    assert pack_layers(model) == 2


def test_inputs_that_need_gradients_take_the_dense_path() -> None:
    model = seeded(Layers())
    x = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    model(x).sum().backward()
    expected = x.grad.clone()  # type: ignore[union-attr]
    x.grad = None
    pack_layers(model)
    model(x).sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_only_fp32_cpu_layers_of_the_plain_types_are_packed() -> None:
    half = nn.Sequential(nn.Linear(4, 4)).half()
    assert pack_layers(half) == 0
    cast = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 4, 3))
    cast_at_forward(cast, torch.float32)  # float8-storage layers are subclasses: left alone
    assert pack_layers(cast) == 0


def test_unbatched_and_odd_shaped_inputs() -> None:
    model = seeded(Layers())
    generator = torch.Generator().manual_seed(6)
    image, tokens = torch.randn(8, 9, 9, generator=generator), torch.randn(2, 3, 5, 12, generator=generator)
    def outputs() -> tuple[Tensor, ...]:
        mapped = model.conv3(image)  # [16, 9, 9]
        return mapped, model.pointwise(mapped), model.linear(tokens), model.linear(tokens[0, 0, 0])

    with torch.inference_mode():
        expected = outputs()
        pack_layers(model)
        got = outputs()
    for value, want in zip(got, expected, strict=True):
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6)


def test_pointwise_conv_projects_tokens() -> None:
    conv = seeded(nn.Conv2d(16, 24, 1))
    tokens = torch.randn(2, 30, 16, generator=torch.Generator().manual_seed(3))
    expected = F.linear(tokens, conv.weight.flatten(1), conv.bias)
    pack_layers(conv)
    assert isinstance(conv, PackedConv2d)
    with torch.inference_mode():
        torch.testing.assert_close(conv.project_tokens(tokens), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1x1 conv"):
        big = seeded(nn.Conv2d(4, 4, 3))
        pack_layers(big)
        big.project_tokens(tokens)  # type: ignore[operator]


@pytest.mark.parametrize("use_linear", [False, True])
def test_spatial_transformer_packed_equals_dense(use_linear: bool) -> None:
    block = seeded(SpatialTransformer(64, heads=2, dim_head=32, depth=1, context_dim=48, use_linear=use_linear))
    generator = torch.Generator().manual_seed(4)
    x, context = torch.randn(2, 64, 6, 6, generator=generator), torch.randn(2, 5, 48, generator=generator)
    with torch.inference_mode():
        expected = block(x, context)
        pack_layers(block)
        got = block(x, context)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
