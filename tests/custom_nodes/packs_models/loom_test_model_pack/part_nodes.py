"""CLIP and VAE nodes written against ComfyUI's CLIP and VAE interfaces."""


class EncodeWithTokens:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP",), "text": ("STRING", {"default": "a red circle"}),
                             "rebuild": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "loom test/clip"

    def encode(self, clip, text, rebuild):
        tokens = clip.tokenize(text)
        if rebuild:  # edited the way packs edit tokens: new lists of (token, weight) pairs
            tokens = {key: [[(token, weight) for token, weight, _ in chunk] for chunk in clip.tokenize(text, True)[key]]
                      for key in tokens}
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        return ([[cond, {"pooled_output": pooled}]],)


class VaeRoundTrip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "round_trip"
    CATEGORY = "loom test/vae"

    def round_trip(self, image, vae):
        samples = vae.encode(image[:, :, :, :3])
        assert samples.shape[1] == 4 and samples.shape[2] * vae.spacial_compression_encode() == image.shape[1]
        return (vae.decode(samples),)
