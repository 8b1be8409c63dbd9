"""ModelFamily: what a checkpoint is (SD1, SD2, SDXL, refiner; eps or v; inpainting;
InstructPix2Pix; the SD x4 upscaler; the rectified-flow transformers SD3/SD3.5 and Flux.1). Torch-free: handles
and node declarations use it without loading torch; :func:`engine.models.loaders.detect_family` makes one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    """What a checkpoint is: its family, prediction type and latent format."""

    name: str  # "sd1" | "sd2" | "sdxl" | "sdxl_refiner" | "sd3" | "flux"
    prediction: str  # "eps" | "v" | "flow" (SD3 and Flux: the model predicts the flow velocity)
    in_channels: int  # latent channels the diffusion model takes (Flux: its patchified input / 4)
    latent_channels: int = 4
    #: An SD2 unCLIP model: its UNet takes unCLIP image embeddings as the adm vector (see engine/backend/unclip.py).
    unclip: bool = False
    #: What the keys tell apart within a family: SD3 "sd3" / "sd3.5" (qk-norm); Flux "dev" (guidance
    #: embedding), "schnell" (none), "fill" (inpaint channels), "control" (depth/canny channels).
    variant: str = ""

    @property
    def is_flow(self) -> bool:
        """A rectified-flow transformer (SD3, SD3.5, Flux): MMDiT or Flux instead of a UNet, 16 latent channels."""
        return self.name in FLOW_FAMILIES

    @property
    def is_inpaint(self) -> bool:
        return self.in_channels == 9 and not self.is_flow

    @property
    def is_ip2p(self) -> bool:
        """An InstructPix2Pix UNet: 8 input channels, the latent then the input image's latent."""
        return self.in_channels == 8

    @property
    def is_x4_upscaler(self) -> bool:
        """The SD x4 upscaler: an SD2 v-prediction UNet with 7 input channels (latent + low-res RGB image),
        a noise-level class label, a 4x VAE and its own noise schedule (engine/backend/x4_upscaler.py)."""
        return self.in_channels == 7

    @property
    def linear_start(self) -> float:
        """The first beta of the model's scaled-linear noise schedule (the last is 0.012, or 0.02 for x4)."""
        return 1e-4 if self.is_x4_upscaler else 0.00085

    @property
    def linear_end(self) -> float:
        return 0.02 if self.is_x4_upscaler else 0.012

    @property
    def is_sdxl(self) -> bool:
        return self.name in ("sdxl", "sdxl_refiner")

    @property
    def checkpoint_vae_prefix(self) -> str:
        """Where the family's single-file checkpoints keep the VAE (Flux's ComfyUI checkpoints: ``vae.``)."""
        return "vae." if self.name == "flux" else "first_stage_model."

    @property
    def latent_format(self) -> str | None:
        """The named latent format of the family (engine/backend/latent_formats.py), None: a plain scale."""
        return self.name if self.is_flow else None

    @property
    def latent_scale_factor(self) -> float:
        if self.name in FLOW_SCALES:
            return FLOW_SCALES[self.name]
        if self.is_x4_upscaler:
            return 0.08333
        return 0.13025 if self.is_sdxl else 0.18215

    @property
    def label(self) -> str:
        if self.name == "sd3":
            return "SD3.5" if self.variant == "sd3.5" else "SD3"
        if self.name == "flux":
            return f"Flux.1 {self.variant}".rstrip()
        text = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}[self.name]
        if self.is_x4_upscaler:
            text = "SD x4 upscaler"
        if self.unclip:
            text += " unCLIP"
        if self.is_inpaint:
            text += " inpainting"
        if self.is_ip2p:
            text += " InstructPix2Pix"
        return text + (" (v-prediction)" if self.prediction == "v" else "")


#: The rectified-flow families and their VAE latents' scale (the shift: engine/backend/latent_formats.py).
FLOW_FAMILIES = ("sd3", "flux")
FLOW_SCALES = {"sd3": 1.5305, "flux": 0.3611}
