"""Training LoRA-style adapters on a frozen, shared UNet: the tensor work of the TrainLoraNode.

Nothing here knows of nodes, files or key names. The caller hands over the UNet, its model sampling, the
training examples (model-space latents with their conditioning), which modules to adapt and the options; it
gets back the trained adapters and the loss of every optimizer step.

The UNet is never changed. Its parameters are read once, detached and in float32 (a copy when the module
holds fp16 / bf16 weights); every step computes each adapted weight as ``W + delta`` and runs the UNet through
:func:`torch.func.functional_call` with those tensors in place of its parameters, inside
``torch.inference_mode(False)`` and ``torch.enable_grad()``, so the only tensors that receive gradients are
the adapters' (float32 leaves, whatever dtype the caller stores them in). ``autocast_dtype`` (bf16 on CUDA)
runs the forward under :func:`torch.autocast`. Gradient checkpointing wraps the input / middle / output blocks' forward
for the run (an instance attribute, removed afterwards even on errors; see :func:`checkpointed_blocks`).

Adapters (``delta`` has the weight's shape; ``scale = alpha / rank``; the key names are Loom's LoRA loader's,
engine/models/lora_formats.py, so a saved adapter loads back to the same weights):

* ``LoRA``: ``delta = scale * up @ down`` with ``down`` ``[r, in, (kh, kw)]`` initialised kaiming-uniform
  (a = sqrt 5) and ``up`` ``[out, r, (1, 1)]`` zero (kohya's LoRA / LoCon layout), so training starts from the
  model itself.
* ``LoHa``: ``delta = scale * (w1_a @ w1_b) * (w2_a @ w2_b)`` (Hadamard product); ``w2_b`` starts at zero.
* ``LoKr``: ``delta = scale * kron(w1, w2_a @ w2_b)``, ``w1`` ``[a, b]`` full with ``a * c = out`` and
  ``b * d = in`` (the factor of each side nearest its square root), ``w2_b`` ``[r, d * kh * kw]`` starts at zero.

Each step (ComfyUI's recipe): ``sigma = percent_to_sigma(u)`` with ``u`` uniform in [0, 1) per example (kept
inside the model's sigma range: ``u = 0`` would give 1e9), a batch picked by seeded permutations of the
examples (repeated when a group needs more examples than there are), seeded noise,
``x = latent + sigma * noise``, the model's denoised estimate through its parameterisation
(:class:`~engine.backend.guidance.ParameterizedModel`) and ``loss = criterion(denoised, latent)``. With prior
examples (DreamBooth's class prior preservation) every step also runs a batch of those and adds
``prior_loss_weight`` times its loss. ``steps`` counts micro-steps; the optimizer steps once every
``grad_accumulation_steps`` of them (the last group may be shorter), each micro-step's loss divided by its
group's size, so one optimizer step of ``k`` micro-batches of ``b`` equals one of ``k * b`` examples: every
group draws its examples, sigmas and noise for the whole group at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from engine.backend.guidance import ParameterizedModel
from engine.backend.model_sampling import ModelSampling
from engine.backend.unet import UNetModel

__all__ = [
    "ALGORITHMS",
    "LOSS_FUNCTIONS",
    "OPTIMIZERS",
    "TRAINABLE_ALGORITHMS",
    "Adapter",
    "Examples",
    "TrainingOptions",
    "TrainingResult",
    "adapter_from_tensors",
    "adaptable_modules",
    "checkpointed_blocks",
    "new_adapter",
    "train_adapters",
]

#: ComfyUI's algorithm choices; OFT has no key format Loom's LoRA loader reads, so it cannot be trained here.
ALGORITHMS: tuple[str, ...] = ("LoRA", "LoHa", "LoKr", "OFT")
TRAINABLE_ALGORITHMS: tuple[str, ...] = ("LoRA", "LoHa", "LoKr")
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD, "RMSprop": torch.optim.RMSprop,
}
LOSS_FUNCTIONS: dict[str, Callable[[], nn.Module]] = {
    "MSE": nn.MSELoss, "L1": nn.L1Loss, "Huber": nn.HuberLoss, "SmoothL1": nn.SmoothL1Loss,
}
#: The tensor names of each algorithm (the LoRA loader's key suffixes after the target name).
COMPONENTS: dict[str, tuple[str, ...]] = {
    "LoRA": ("lora_up.weight", "lora_down.weight"),
    "LoHa": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "LoKr": ("lokr_w1", "lokr_w2_a", "lokr_w2_b"),
}
#: Called after every micro-step with (steps done, steps in all); it may raise to stop the training.
StepCallback = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------- adapters


@dataclass(eq=False)
class Adapter:
    """One weight's trainable change: ``tensors`` by component name (see :data:`COMPONENTS`), float32 leaves."""

    kind: str
    shape: tuple[int, ...]  # the adapted weight's shape
    tensors: dict[str, Tensor]
    alpha: float

    @property
    def rank(self) -> int:
        if self.kind == "LoRA":
            return int(self.tensors["lora_down.weight"].shape[0])
        if self.kind == "LoHa":
            return int(self.tensors["hada_w1_b"].shape[0])
        return int(self.tensors["lokr_w2_b"].shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> Tensor:
        """``scale * delta`` in the weight's shape (float32, differentiable in the tensors)."""
        t = self.tensors
        if self.kind == "LoRA":
            change = t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1)
        elif self.kind == "LoHa":
            change = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        else:
            change = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"])
        return (change * self.scale).reshape(self.shape)

    def parameters(self) -> list[Tensor]:
        return list(self.tensors.values())

    def state(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """The tensors by component name in ``dtype`` (``alpha`` as a float32 scalar), detached, on the CPU."""
        out = {name: tensor.detach().to(device="cpu", dtype=dtype).contiguous()
               for name, tensor in self.tensors.items()}
        out["alpha"] = torch.tensor(float(self.alpha), dtype=torch.float32)
        return out


def _near_square_split(size: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == size`` and ``a`` the largest divisor not above ``sqrt(size)``."""
    first = max(d for d in range(1, math.isqrt(size) + 1) if size % d == 0)
    return first, size // first


def new_adapter(kind: str, shape: tuple[int, ...], rank: int, generator: torch.Generator,
                device: torch.device | None = None, alpha: float = 1.0) -> Adapter:
    """A fresh adapter for a weight of ``shape`` whose delta is zero (see the module doc for the layouts)."""
    if kind not in COMPONENTS:
        raise ValueError(f"algorithm {kind!r}: trainable ones are {', '.join(TRAINABLE_ALGORITHMS)}")
    out, fan_in = shape[0], math.prod(shape[1:])
    kernel = shape[2:]
    tensors: dict[str, Tensor] = {}
    if kind == "LoRA":
        down = torch.empty((rank, *shape[1:]))
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        tensors = {"lora_up.weight": torch.zeros((out, rank, *(1 for _ in kernel))), "lora_down.weight": down}
    elif kind == "LoHa":
        tensors = {"hada_w1_a": torch.randn((out, rank), generator=generator) * 0.1,
                   "hada_w1_b": torch.randn((rank, fan_in), generator=generator),
                   "hada_w2_a": torch.randn((out, rank), generator=generator) * 0.1,
                   "hada_w2_b": torch.zeros((rank, fan_in))}
    else:
        a, c = _near_square_split(out)
        b, d = _near_square_split(shape[1])
        w1 = torch.empty((a, b))
        nn.init.kaiming_uniform_(w1, a=math.sqrt(5), generator=generator)
        w2_a = torch.empty((c, rank))
        nn.init.kaiming_uniform_(w2_a, a=math.sqrt(5), generator=generator)
        tensors = {"lokr_w1": w1, "lokr_w2_a": w2_a, "lokr_w2_b": torch.zeros((rank, d * math.prod(kernel)))}
    return _leaves(Adapter(kind, tuple(shape), tensors, float(alpha)), device)


def adapter_from_tensors(kind: str, shape: tuple[int, ...], tensors: Mapping[str, Tensor], alpha: float | None,
                         device: torch.device | None = None) -> Adapter:
    """An adapter continuing from saved tensors (component name -> tensor). Without ``alpha`` the loader's
    scale is 1, so alpha becomes the rank. ValueError when a component is missing or the delta's shape is not
    the weight's."""
    missing = [name for name in COMPONENTS[kind] if name not in tensors]
    if missing:
        raise ValueError(f"the {kind} adapter lacks {', '.join(missing)}")
    adapter = Adapter(kind, tuple(shape), {name: tensors[name].float().clone() for name in COMPONENTS[kind]}, 1.0)
    adapter.alpha = float(alpha) if alpha is not None else float(adapter.rank)
    try:
        made = adapter.delta()
    except RuntimeError as exc:
        raise ValueError(f"its {kind} tensors do not make a weight of shape {list(shape)}: {exc}") from exc
    if tuple(made.shape) != tuple(shape):
        raise ValueError(f"its {kind} tensors make {list(made.shape)}, the weight is {list(shape)}")
    return _leaves(adapter, device)


def _leaves(adapter: Adapter, device: torch.device | None) -> Adapter:
    adapter.tensors = {name: tensor.to(device=device, dtype=torch.float32).requires_grad_(True)
                       for name, tensor in adapter.tensors.items()}
    return adapter


def adaptable_modules(unet: nn.Module) -> dict[str, tuple[int, ...]]:
    """The UNet's Linear and Conv2d modules (path -> weight shape), in module order."""
    return {path: tuple(module.weight.shape) for path, module in unet.named_modules()
            if isinstance(module, nn.Linear | nn.Conv2d)}


# --------------------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Examples:
    """Training examples: model-space latents ``[N, C, H, W]`` and their conditioning, one entry shared by
    all (``contexts`` of length 1) or one per latent. Each context is ``[1, T, D]``; ``ys`` holds the adm
    vectors ``[1, adm]`` (SDXL) or None."""

    latents: Tensor
    contexts: tuple[Tensor, ...]
    ys: tuple[Tensor | None, ...]

    def __post_init__(self) -> None:
        count = self.latents.shape[0]
        if count == 0:
            raise ValueError("there are no latents to train on")
        if len(self.contexts) not in (1, count) or len(self.ys) != len(self.contexts):
            raise ValueError(f"{len(self.contexts)} conditioning entries for {count} latents: give one entry "
                             "(shared by all) or one per latent")

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(latents, context, y)`` of the examples at ``indices`` (contexts padded to a common length)."""
        latents = self.latents[indices]
        picks = [0] * len(indices) if len(self.contexts) == 1 else [int(i) for i in indices]
        contexts = [self.contexts[i] for i in picks]
        length = math.lcm(*(c.shape[1] for c in contexts))
        context = torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])
        ys = [self.ys[i] for i in picks]
        if any(y is None for y in ys):
            return latents, context, None
        return latents, context, torch.cat([y for y in ys if y is not None])


@dataclass(frozen=True)
class TrainingOptions:
    steps: int = 16
    batch_size: int = 1
    grad_accumulation_steps: int = 1
    learning_rate: float = 0.0005
    rank: int = 8
    optimizer: str = "AdamW"
    loss_function: str = "MSE"
    seed: int = 0
    algorithm: str = "LoRA"
    gradient_checkpointing: bool = True
    #: Autocast to this dtype (bf16 on CUDA); None computes in float32.
    autocast_dtype: torch.dtype | None = None
    prior_loss_weight: float = 1.0


@dataclass
class TrainingResult:
    adapters: dict[str, Adapter]  # module path -> its adapter
    losses: list[float] = field(default_factory=list)  # one per optimizer step


@dataclass(frozen=True)
class _Draw:
    """The examples, sigmas and noise of one group of micro-steps."""

    indices: Tensor
    sigmas: Tensor
    noise: Tensor


def _draw(generator: torch.Generator, examples: Examples, count: int, ms: ModelSampling) -> _Draw:
    """``count`` examples by seeded permutations (repeated when the set is smaller), their sigmas
    (``percent_to_sigma`` of uniform draws, kept inside the model's range) and their noise; all on the CPU."""
    permutations = [torch.randperm(len(examples), generator=generator) for _ in range(-(-count // len(examples)))]
    indices = torch.cat(permutations)[:count]
    percents = torch.rand(count, generator=generator, dtype=torch.float64)
    low, high = float(ms.sigma_min), float(ms.sigma_max)
    sigmas = torch.tensor([min(max(ms.percent_to_sigma(float(p)), low), high) for p in percents])
    noise = torch.randn((count, *examples.latents.shape[1:]), generator=generator)
    return _Draw(indices, sigmas, noise)


def _groups(steps: int, accumulation: int) -> list[int]:
    """The micro-steps of each optimizer step: ``accumulation`` each, the last group what is left."""
    return [min(accumulation, steps - start) for start in range(0, steps, accumulation)]


# --------------------------------------------------------------------------------------------- checkpointing


@contextmanager
def checkpointed_blocks(unet: UNetModel, enabled: bool = True) -> Iterator[None]:
    """Run the UNet's input, middle and output blocks under activation checkpointing while inside (non-reentrant
    ``torch.utils.checkpoint``), so backward recomputes each block's activations instead of keeping them.

    Each block gets an instance ``forward`` for the run, removed on the way out whatever happens. The wrapper
    captures the parameter tensors the block holds when it runs (the adapted weights that
    :func:`torch.func.functional_call` put in place), so the recomputation in backward, after that call has
    put the originals back, uses the same weights.
    """
    blocks: list[nn.Module] = [*unet.input_blocks, unet.middle_block, *unet.output_blocks] if enabled else []
    try:
        for block in blocks:
            object.__setattr__(block, "forward", _checkpointed_forward(block))
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def _checkpointed_forward(block: nn.Module) -> Callable[..., Any]:
    plain = type(block).forward
    inside = [False]

    def forward(*args: Any, **kwargs: Any) -> Any:
        if inside[0] or not torch.is_grad_enabled():
            return plain(block, *args, **kwargs)
        weights: dict[str, Tensor] = dict(block.named_parameters())

        def run(*inputs: Any) -> Any:
            inside[0] = True
            try:
                return torch.func.functional_call(block, weights, inputs, kwargs)
            finally:
                inside[0] = False

        return checkpoint(run, *args, use_reentrant=False)

    return forward


# --------------------------------------------------------------------------------------------- training


def train_adapters(unet: UNetModel, model_sampling: ModelSampling, examples: Examples, targets: Sequence[str],
                   options: TrainingOptions, *, prior: Examples | None = None,
                   initial: Mapping[str, Adapter] | None = None,
                   on_step: StepCallback | None = None) -> TrainingResult:
    """Train adapters on the modules ``targets`` (paths of Linear / Conv2d modules of ``unet``) of the frozen
    ``unet``; ``initial`` adapters (by path) continue from saved ones, the other targets start fresh. See the
    module doc for the recipe. ``on_step`` may raise (an interrupt): the UNet is left as it was."""
    _check(options)
    device = next(unet.parameters()).device
    shapes = adaptable_modules(unet)
    unknown = [path for path in targets if path not in shapes]
    if unknown:
        raise ValueError(f"not Linear or Conv2d modules of the UNet: {', '.join(unknown[:5])}")
    init = torch.Generator().manual_seed(options.seed % 2**64)
    adapters = {path: (initial or {}).get(path) or new_adapter(options.algorithm, shapes[path], options.rank, init,
                                                               device) for path in targets}
    trainable = [tensor for adapter in adapters.values() for tensor in adapter.parameters()]
    optimizer = OPTIMIZERS[options.optimizer](trainable, lr=options.learning_rate)
    criterion = LOSS_FUNCTIONS[options.loss_function]()
    ms = model_sampling.to(device)
    step = _Step(unet, ms, adapters, criterion, device, options)
    data = torch.Generator().manual_seed(options.seed % 2**64)
    result = TrainingResult(adapters)
    done = 0
    with torch.inference_mode(False), torch.enable_grad(), checkpointed_blocks(unet, options.gradient_checkpointing):
        for size in _groups(options.steps, options.grad_accumulation_steps):
            count = size * options.batch_size
            draw = _draw(data, examples, count, model_sampling)
            prior_draw = _draw(data, prior, count, model_sampling) if prior is not None else None
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(size):
                part = slice(micro * options.batch_size, (micro + 1) * options.batch_size)
                loss = step.loss(examples, draw, part)
                if prior is not None and prior_draw is not None:
                    loss = loss + options.prior_loss_weight * step.loss(prior, prior_draw, part)
                (loss / size).backward()
                total += float(loss.detach()) / size
                done += 1
                if on_step is not None:
                    on_step(done, options.steps)
            optimizer.step()
            result.losses.append(total)
    return result


def _check(options: TrainingOptions) -> None:
    if options.algorithm not in TRAINABLE_ALGORITHMS:
        raise ValueError(f"algorithm {options.algorithm!r} cannot be trained; use one of "
                         f"{', '.join(TRAINABLE_ALGORITHMS)}")
    if options.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {options.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if options.loss_function not in LOSS_FUNCTIONS:
        raise ValueError(f"loss_function {options.loss_function!r}: use one of {', '.join(LOSS_FUNCTIONS)}")
    if min(options.steps, options.batch_size, options.grad_accumulation_steps, options.rank) < 1:
        raise ValueError("steps, batch_size, grad_accumulation_steps and rank must be 1 or more")


class _Step:
    """The loss of a micro-batch: the UNet with every adapted weight ``W + delta`` in place (functionally)."""

    def __init__(self, unet: UNetModel, ms: ModelSampling, adapters: Mapping[str, Adapter], criterion: nn.Module,
                 device: torch.device, options: TrainingOptions) -> None:
        self.unet = unet
        self.adapters = adapters
        self.criterion = criterion
        self.device = device
        self.autocast = options.autocast_dtype
        # Frozen base weights: detached (no gradient ever reaches the shared module) and float32 (a float32 copy
        # of fp16 / bf16 weights): autocast lowers each matmul's precision itself, and mixed parameter dtypes
        # would trip the norms.
        self.base = {name: self._frozen(param) for name, param in unet.named_parameters()}
        self.ms = ms
        self.model = ParameterizedModel(self._apply, ms)

    @staticmethod
    def _frozen(param: Tensor) -> Tensor:
        frozen = param.detach()
        return frozen.float() if frozen.is_floating_point() else frozen

    def _weights(self) -> dict[str, Tensor]:
        weights = dict(self.base)
        for path, adapter in self.adapters.items():
            name = f"{path}.weight"
            weights[name] = weights[name] + adapter.delta()
        return weights

    def _apply(self, x: Tensor, timestep: Tensor, conds: tuple[Tensor, Tensor | None, dict[str, Tensor]]) -> Tensor:
        context, y, weights = conds
        out: Tensor = torch.func.functional_call(self.unet, weights, (x, timestep, context), {"y": y})
        return out

    def loss(self, examples: Examples, draw: _Draw, part: slice) -> Tensor:
        latents, context, y = examples.batch(draw.indices[part])
        latents = latents.to(self.device, torch.float32)
        sigma = draw.sigmas[part].to(self.device)
        noise = draw.noise[part].to(self.device)
        x = self.ms.noise_scaling(sigma, noise, latents)
        context = context.to(self.device)
        y = None if y is None else y.to(self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
                    else nullcontext())
        with autocast:
            denoised = self.model(x, sigma, (context, y, self._weights()))
        loss: Tensor = self.criterion(denoised.float(), latents)
        return loss
