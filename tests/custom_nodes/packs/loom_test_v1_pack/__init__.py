"""A ComfyUI V1 custom node pack written the way packs are written, for Loom's tests: it imports ComfyUI's
modules (folder_paths, comfy.utils, comfy.model_management, nodes, server) and uses the V1 features."""

from aiohttp import web
from server import PromptServer

from .image_nodes import ImageTimes, InvertWithCore, PreviewTinted
from .logic_nodes import CountTo, Expand, LazySwitch, SumList
from .misc_nodes import AlwaysNew, CheckedValue, Countdown, ShowInfo, WhoAsked

WEB_DIRECTORY = "./web"

NODE_CLASS_MAPPINGS = {
    "LoomTestImageTimes": ImageTimes,
    "LoomTestInvertWithCore": InvertWithCore,
    "LoomTestPreviewTinted": PreviewTinted,
    "LoomTestCountTo": CountTo,
    "LoomTestSumList": SumList,
    "LoomTestLazySwitch": LazySwitch,
    "LoomTestExpand": Expand,
    "LoomTestShowInfo": ShowInfo,
    "LoomTestCountdown": Countdown,
    "LoomTestAlwaysNew": AlwaysNew,
    "LoomTestCheckedValue": CheckedValue,
    "LoomTestWhoAsked": WhoAsked,
    "KSampler": ImageTimes,  # a name Loom already has: skipped, never replacing Loom's
}
NODE_DISPLAY_NAME_MAPPINGS = {"LoomTestImageTimes": "Image × Factor (test pack)"}


@PromptServer.instance.routes.get("/loom_test/hello")
async def hello(request: web.Request) -> web.Response:
    PromptServer.instance.send_sync("loom_test.hello", {"who": request.query.get("who", "")})
    return web.json_response({"hello": request.query.get("who", "")})
