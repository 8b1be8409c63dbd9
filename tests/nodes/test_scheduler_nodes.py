"""The scheduler, sigma and model-sampling nodes run on a MODEL handle (no weights needed: a model's
sampling follows from its family and its ModelSamplingSpec)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.context import RunContext
from engine.models.families import ModelFamily
from engine.models.handles import FileRef, ModelHandle, ModelSamplingSpec
from nodes import model_loaders as ml
from nodes import schedulers as sc
from tests.nodes.sd_workflow import (
    DEMO_CHECKPOINT,
    DEMO_MODELS,
    DEMO_SIZE,
    make_executor,
    require_demo_model,
    run_prompt,
)

SD1 = ModelHandle(FileRef("/models/sd15.safetensors", 1, 1), ModelFamily("sd1", "eps", 4))


def test_basic_and_turbo_schedulers(ctx: RunContext) -> None:
    (sigmas,) = sc.BasicScheduler().run(ctx, SD1, "karras", 10, 1.0)
    assert len(sigmas) == 11 and float(sigmas[0]) == pytest.approx(14.6146, rel=1e-4) and float(sigmas[-1]) == 0
    (turbo,) = sc.SDTurboScheduler().run(ctx, SD1, 1, 1.0)
    assert turbo.tolist() == pytest.approx([14.6146, 0.0], rel=1e-4)


def test_model_sampling_discrete_lcm_changes_the_schedule(ctx: RunContext) -> None:
    (lcm,) = ml.ModelSamplingDiscrete().run(ctx, SD1, "lcm", False)
    assert lcm.sampling == ModelSamplingSpec(kind="discrete", prediction="lcm") and lcm.family == SD1.family
    (sigmas,) = sc.BasicScheduler().run(ctx, lcm, "sgm_uniform", 4, 1.0)
    (eps_sigmas,) = sc.BasicScheduler().run(ctx, SD1, "sgm_uniform", 4, 1.0)
    assert float(sigmas[0]) == pytest.approx(float(eps_sigmas[0]))  # both start at timestep 999
    assert not torch.allclose(sigmas, eps_sigmas)  # LCM's 50 levels put the others elsewhere
    (v,) = ml.ModelSamplingDiscrete().run(ctx, SD1, "v_prediction", True)
    assert v.family.prediction == "v" and v.sampling is not None and v.sampling.zsnr
    (value,) = sc.SamplingPercentToSigma().run(ctx, v, 0.0, True)
    assert value > 4000  # zsnr's last sigma


def test_model_sampling_continuous_nodes(ctx: RunContext) -> None:
    (edm,) = ml.ModelSamplingContinuousEDM().run(ctx, SD1, "edm_playground_v2.5", 80.0, 0.002)
    assert edm.sampling is not None and edm.sampling.sigma_data == 0.5
    assert edm.sampling.latent_format == "playground_v2.5"
    (sigmas,) = sc.BasicScheduler().run(ctx, edm, "exponential", 5, 1.0)
    assert float(sigmas[0]) == pytest.approx(80.0, rel=1e-5)
    with pytest.raises(ValueError, match="ModelSamplingContinuousEDM.*cosmos"):
        ml.ModelSamplingContinuousEDM().run(ctx, SD1, "cosmos_rflow", 80.0, 0.002)
    with pytest.raises(ValueError, match="ModelSamplingContinuousV.*sigma_min"):
        ml.ModelSamplingContinuousV().run(ctx, SD1, "v_prediction", 500.0, 0.0)
    (v,) = ml.ModelSamplingContinuousV().run(ctx, SD1, "v_prediction", 500.0, 0.03)
    assert sc.SamplingPercentToSigma().run(ctx, v, 1.0, True)[0] == pytest.approx(0.03, rel=1e-5)


def test_compute_dtype_and_epsilon_scaling(ctx: RunContext) -> None:
    (model,) = ml.ModelComputeDtype().run(ctx, SD1, "bf16")
    assert model.compute_dtype == "bf16" and ml.ModelComputeDtype().run(ctx, model, "default")[0].compute_dtype is None
    (patched,) = ml.EpsilonScaling().run(ctx, SD1, 1.01)
    assert len(patched.sampling_patches) == 1 and patched.sampling_patches[0].scaling_factor == 1.01
    assert SD1.sampling_patches == ()


def test_sigma_tool_nodes(ctx: RunContext) -> None:
    sigmas = torch.tensor([8.0, 4.0, 2.0, 0.0])
    high, low = sc.SplitSigmas().run(ctx, sigmas, 1)
    assert high.tolist() == [8.0, 4.0] and low.tolist() == [4.0, 2.0, 0.0]
    assert sc.FlipSigmas().run(ctx, sigmas)[0].tolist() == pytest.approx([0.0001, 2.0, 4.0, 8.0])
    assert sc.SetFirstSigma().run(ctx, sigmas, 20.0)[0].tolist() == [20.0, 4.0, 2.0, 0.0]
    (ays,) = sc.AlignYourStepsScheduler().run(ctx, "SD1", 10, 1.0)
    assert len(ays) == 11 and float(ays[-1]) == 0.0
    (gits,) = sc.GITSScheduler().run(ctx, 1.2, 10, 1.0)
    assert len(gits) == 11
    with pytest.raises(ValueError, match="GITSScheduler input 'coeff'"):
        sc.GITSScheduler().run(ctx, 1.23, 10, 1.0)


def test_lcm_shape_runs_on_the_demo_model(tmp_path: Path) -> None:
    """ModelSamplingDiscrete lcm + KSampler lcm: the MODEL's choice reaches the sampling pipeline."""
    require_demo_model()
    executor = make_executor(tmp_path, DEMO_MODELS)
    results = {}
    for sampling in ("eps", "lcm"):
        prompt = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO_CHECKPOINT}},
            "2": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": sampling,
                                                                     "zsnr": False}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": DEMO_SIZE, "height": DEMO_SIZE,
                                                                "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {
                "model": ["2", 0], "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
                "steps": 4, "cfg": 1.0, "sampler_name": "lcm", "scheduler": "sgm_uniform", "denoise": 1.0}},
        }
        results[sampling] = run_prompt(executor, prompt, latent=["5", 0])["latent"]["samples"]
    assert torch.isfinite(results["lcm"]).all()
    assert not torch.allclose(results["lcm"], results["eps"], atol=1e-3)  # LCM's 50 levels and boundary condition
