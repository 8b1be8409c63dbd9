"""MODEL nodes written against ComfyUI's ModelPatcher interface."""

from collections import defaultdict

CALLS = defaultdict(list)  # function name -> the sorted args keys of each call


def cond_only(args):
    """A cfg function: ComfyUI's cfg functions return a noise-like value (input - prediction)."""
    CALLS["cfg"].append(sorted(args))
    return args["cond"]


class CondOnlyCfg:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "loom test/model"

    def patch(self, model):
        m = model.clone()
        m.set_model_sampler_cfg_function(cond_only)
        return (m,)


class PostCfgScale:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "loom test/model"

    def patch(self, model, factor):
        def scale(args):
            CALLS["post_cfg"].append(sorted(args))
            return args["denoised"] * factor

        m = model.clone()
        m.set_model_sampler_post_cfg_function(scale)
        return (m,)


class PreCfgIdentity:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "loom test/model"

    def patch(self, model):
        def same(args):
            CALLS["pre_cfg"].append(sorted(args))
            return args["conds_out"]

        m = model.clone()
        m.set_model_sampler_pre_cfg_function(same)
        return (m,)


class OutputBlockProbe:
    """Records the output blocks it passes and leaves them unchanged."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "loom test/model"

    def patch(self, model):
        def probe(h, hsp, transformer_options):
            CALLS["output_block"].append(transformer_options["block"])
            return h, hsp

        m = model.clone()
        m.set_model_output_block_patch(probe)
        return (m,)


class PassModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL", "FLOAT", "FLOAT")
    RETURN_NAMES = ("model", "sigma_min", "sigma_max")
    FUNCTION = "look"
    CATEGORY = "loom test/model"

    def look(self, model):
        sampling = model.get_model_object("model_sampling")
        assert sampling is model.model.model_sampling
        assert model.is_clone(model.clone()) and model.model_options["transformer_options"] == {}
        return (model, float(sampling.sigma_min), float(sampling.sigma_max))


class DumpValues:
    """Shows a LATENT's samples, an IMAGE or a CONDITIONING's tensors as flat lists in its UI output."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"optional": {"latent": ("LATENT",), "image": ("IMAGE",), "conditioning": ("CONDITIONING",),
                             "number": ("FLOAT", {"forceInput": True})}}

    RETURN_TYPES = ()
    FUNCTION = "dump"
    OUTPUT_NODE = True
    CATEGORY = "loom test/model"

    def dump(self, latent=None, image=None, conditioning=None, number=None):
        ui = {}
        if latent is not None:
            ui["latent"] = latent["samples"].flatten().tolist()
            ui["latent_shape"] = list(latent["samples"].shape)
        if image is not None:
            ui["image"] = image.flatten().tolist()
            ui["image_shape"] = list(image.shape)
        if conditioning is not None:
            cond, extras = conditioning[0]
            ui["cond"] = cond.flatten().tolist()
            ui["cond_shape"] = list(cond.shape)
            ui["pooled"] = extras["pooled_output"].flatten().tolist()
        if number is not None:
            ui["number"] = [number]
        return {"ui": ui}
