"""ComfyUI's interface for the string nodes (comfy_extras/nodes_string.py)."""

from __future__ import annotations

from typing import Any

TEXT: dict[str, Any] = {"multiline": True}
CASE_SENSITIVE = ("case_sensitive", "BOOLEAN", {"default": True})
FLAGS = [("case_insensitive", "BOOLEAN", {"default": True}), ("multiline", "BOOLEAN", {"default": False}),
         ("dotall", "BOOLEAN", {"default": False})]
DOTALL_TIP = ("When enabled, the dot (.) character will match any character including newline characters. "
              "When disabled, dots won't match newlines.")
COUNT_TIP = ("Maximum number of replacements to make. Set to 0 to replace all occurrences (default). "
             "Set to 1 to replace only the first match, 2 for the first two matches, etc.")

EXPECTED: dict[str, dict[str, Any]] = {
    "StringConcatenate": {
        "required": [("string_a", "STRING", TEXT), ("string_b", "STRING", TEXT),
                     ("delimiter", "STRING", {"multiline": False, "default": ""})],
        "output": ["STRING"],
    },
    "StringSubstring": {
        "required": [("string", "STRING", TEXT), ("start", "INT", {}), ("end", "INT", {})],
        "output": ["STRING"],
    },
    "StringLength": {
        "required": [("string", "STRING", TEXT)],
        "output": ["INT"],
        "output_name": ["length"],
    },
    "CaseConverter": {
        "required": [("string", "STRING", TEXT),
                     ("mode", ["UPPERCASE", "lowercase", "Capitalize", "Title Case"], {})],
        "output": ["STRING"],
    },
    "StringTrim": {
        "required": [("string", "STRING", TEXT), ("mode", ["Both", "Left", "Right"], {})],
        "output": ["STRING"],
    },
    "StringReplace": {
        "required": [("string", "STRING", TEXT), ("find", "STRING", TEXT), ("replace", "STRING", TEXT)],
        "output": ["STRING"],
    },
    "StringContains": {
        "required": [("string", "STRING", TEXT), ("substring", "STRING", TEXT), CASE_SENSITIVE],
        "output": ["BOOLEAN"],
        "output_name": ["contains"],
    },
    "StringCompare": {
        "required": [("string_a", "STRING", TEXT), ("string_b", "STRING", TEXT),
                     ("mode", ["Starts With", "Ends With", "Equal"], {}), CASE_SENSITIVE],
        "output": ["BOOLEAN"],
    },
    "RegexMatch": {
        "required": [("string", "STRING", TEXT), ("regex_pattern", "STRING", TEXT), *FLAGS],
        "output": ["BOOLEAN"],
        "output_name": ["matches"],
    },
    "RegexExtract": {
        "required": [("string", "STRING", TEXT), ("regex_pattern", "STRING", TEXT),
                     ("mode", ["First Match", "All Matches", "First Group", "All Groups"], {}), *FLAGS,
                     ("group_index", "INT", {"default": 1, "min": 0, "max": 100})],
        "output": ["STRING"],
    },
    "RegexReplace": {
        "required": [("string", "STRING", TEXT), ("regex_pattern", "STRING", TEXT), ("replace", "STRING", TEXT)],
        "optional": [("case_insensitive", "BOOLEAN", {"default": True}), ("multiline", "BOOLEAN", {"default": False}),
                     ("dotall", "BOOLEAN", {"default": False, "tooltip": DOTALL_TIP}),
                     ("count", "INT", {"default": 0, "min": 0, "max": 100, "tooltip": COUNT_TIP})],
        "output": ["STRING"],
    },
}
