"""Torch-backed SDK for InstructPixToPixConditioning and SD_4XUpscale_Conditioning (imported inside ``run``)."""

from __future__ import annotations

from engine.backend.image_concat import IP2P_KEY, ip2p_pixels, x4_upscale_pixels

__all__ = ["IP2P_KEY", "ip2p_pixels", "x4_upscale_pixels"]
