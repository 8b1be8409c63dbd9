import nodes
from nodes import MAX_RESOLUTION, PreviewImage


class ImageTimes:
    CATEGORY = "loom test/image"
    DESCRIPTION = "Multiplies an image by a factor."
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("image", "width")
    FUNCTION = "times"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.01}),
                             "limit": ("INT", {"default": 64, "min": 1, "max": MAX_RESOLUTION})}}

    def times(self, image, factor, limit):
        return ((image * factor).clamp(0, 1), min(image.shape[2], limit))


class InvertWithCore:
    CATEGORY = "loom test/image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        invert = nodes.NODE_CLASS_MAPPINGS["ImageInvert"]()
        return invert.invert(image)


class PreviewTinted(PreviewImage):
    CATEGORY = "loom test/image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "tint": (["red", "none"],)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    FUNCTION = "tinted"

    def tinted(self, images, tint, prompt=None, extra_pnginfo=None):
        if tint == "red":
            images = images.clone()
            images[..., 0] = 1.0
        return self.save_images(images, "tinted", prompt, extra_pnginfo)
