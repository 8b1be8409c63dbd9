"""A single-file pack."""


class Greeting:
    CATEGORY = "loom test"
    RETURN_TYPES = ("STRING",)
    OUTPUT_NODE = True
    FUNCTION = "greet"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "world", "multiline": False})}}

    def greet(self, name):
        greeting = f"hello {name}"
        return {"ui": {"text": [greeting]}, "result": (greeting,)}


NODE_CLASS_MAPPINGS = {"LoomTestGreeting": Greeting}
