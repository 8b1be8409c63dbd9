"""The names of the samplers and schedulers the backend implements, in ComfyUI's combo order.

Torch-free, so node declarations (and ``/object_info``) list them without loading torch. The
registries in :mod:`engine.backend.samplers` and :mod:`engine.backend.schedules` are keyed by these
names; a test keeps the two in step.
"""

from __future__ import annotations

SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde",
    "lcm", "ddim", "uni_pc", "uni_pc_bh2",
)

SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)
