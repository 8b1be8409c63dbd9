"""ComfyUI custom node packs, loaded unchanged from ``custom_nodes/`` folders (issue 21).

* :mod:`engine.custom_nodes.packs` finds the packs (a folder with ``__init__.py``, or one ``.py`` file), imports
  each in its own try and reports what happened (name, path, status, error, nodes, load time);
* :mod:`engine.custom_nodes.v1` adapts a ComfyUI V1 node class (``INPUT_TYPES``, ``RETURN_TYPES``,
  ``FUNCTION``, ...) into a Loom :class:`engine.node.Node` subclass;
* :mod:`engine.custom_nodes.runtime` is what the adapted nodes and the compatibility modules share while
  prompts run: the folders, the registry, the server and the node running now;
* :mod:`engine.custom_nodes.compat` holds our own modules with the names packs import (``folder_paths``,
  ``comfy.utils``, ``comfy.model_management``, ``comfy.samplers``, ``nodes``, ``server``), put into
  ``sys.modules`` only when custom nodes load (:func:`engine.custom_nodes.compat.install`).

Custom nodes run arbitrary code with the server's rights (docs/security.md): loading is opt-out
(``--disable-custom-nodes``) and only from the folders named (``custom_nodes/`` beside main.py,
``--custom-nodes-dir``).
"""
