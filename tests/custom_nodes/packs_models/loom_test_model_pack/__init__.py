"""A ComfyUI V1 pack that uses MODEL, CLIP and VAE the way packs do (ModelPatcher functions, CLIP tokenize and
encode, VAE encode and decode), for Loom's tests. ``CALLS`` records what the sampling functions saw."""

from .model_nodes import CALLS, CondOnlyCfg, DumpValues, OutputBlockProbe, PassModel, PostCfgScale, PreCfgIdentity
from .part_nodes import EncodeWithTokens, VaeRoundTrip

NODE_CLASS_MAPPINGS = {
    "LoomTestCondOnlyCfg": CondOnlyCfg,
    "LoomTestPostCfgScale": PostCfgScale,
    "LoomTestPreCfgIdentity": PreCfgIdentity,
    "LoomTestOutputBlockProbe": OutputBlockProbe,
    "LoomTestPassModel": PassModel,
    "LoomTestEncodeWithTokens": EncodeWithTokens,
    "LoomTestVaeRoundTrip": VaeRoundTrip,
    "LoomTestDumpValues": DumpValues,
}

__all__ = ["CALLS", "NODE_CLASS_MAPPINGS"]
