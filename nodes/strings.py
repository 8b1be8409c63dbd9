"""String utility nodes (ComfyUI's comfy_extras/nodes_string): concatenate, slice, measure, change
case, trim, replace, test and compare text, and match, extract and replace with regular expressions.

Names, input order, types, defaults and results follow ComfyUI. Where ComfyUI hides a mistake, Loom
says so instead:

* an invalid ``regex_pattern`` is an error naming the node and the input (ComfyUI's RegexMatch
  quietly answers False and RegexExtract an empty string); a literal pattern is checked before the
  prompt runs, a linked one when the node runs;
* a group that took no part in a match extracts as an empty string (ComfyUI passes ``None`` on, or
  fails joining it in "All Groups").

Risk, deliberately not guarded: the regex nodes run Python's ``re``, which has no time limit. A
pattern with catastrophic backtracking (``(a+)+$`` on a long run of ``a``) keeps the worker busy
until it finishes, and an interrupt cannot stop it. Capping the text's length would change results
that ComfyUI gives, so Loom does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.sdk import BOOLEAN, COMBO, INT, STRING, Folders, Input, LoomError, Node, Output, RunContext

_MODULE = "comfy_extras.nodes_string"
_CATEGORY = "utils/string"

CASE_MODES: tuple[str, ...] = ("UPPERCASE", "lowercase", "Capitalize", "Title Case")
TRIM_MODES: tuple[str, ...] = ("Both", "Left", "Right")
COMPARE_MODES: tuple[str, ...] = ("Starts With", "Ends With", "Equal")
EXTRACT_MODES: tuple[str, ...] = ("First Match", "All Matches", "First Group", "All Groups")

#: RegexExtract joins several results with this.
_JOIN = "\n"


def _text(name: str, default: str | None = None, multiline: bool = True) -> Input:
    return Input(name, STRING, default=default, multiline=multiline)


class StringConcatenate(Node):
    """string_a + delimiter + string_b."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Concatenate"
    inputs = (_text("string_a"), _text("string_b"), _text("delimiter", default="", multiline=False))
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
        return (delimiter.join((string_a, string_b)),)


class StringSubstring(Node):
    """string[start:end], with Python's slicing (negative indices count from the end)."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Substring"
    inputs = (_text("string"), Input("start", INT), Input("end", INT))
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, string: str, start: int, end: int) -> tuple[str]:
        return (string[start:end],)


class StringLength(Node):
    """The number of characters (Unicode code points) in the string."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Length"
    inputs = (_text("string"),)
    outputs = (Output(INT, name="length"),)

    def run(self, ctx: RunContext, string: str) -> tuple[int]:
        return (len(string),)


class CaseConverter(Node):
    """Change the string's case: UPPERCASE, lowercase, Capitalize (first letter) or Title Case."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Case Converter"
    inputs = (_text("string"), Input("mode", COMBO, choices=CASE_MODES))
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, string: str, mode: str) -> tuple[str]:
        convert = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize,
                   "Title Case": str.title}.get(mode)
        return (convert(string) if convert else string,)


class StringTrim(Node):
    """Remove whitespace from both ends, the left or the right."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Trim"
    inputs = (_text("string"), Input("mode", COMBO, choices=TRIM_MODES))
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, string: str, mode: str) -> tuple[str]:
        trim = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}.get(mode)
        return (trim(string) if trim else string,)


class StringReplace(Node):
    """Replace every occurrence of ``find`` (plain text, not a pattern) with ``replace``."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Replace"
    inputs = (_text("string"), _text("find"), _text("replace"))
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, string: str, find: str, replace: str) -> tuple[str]:
        return (string.replace(find, replace),)


class StringContains(Node):
    """Whether ``substring`` occurs in ``string``."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Contains"
    inputs = (_text("string"), _text("substring"), Input("case_sensitive", BOOLEAN, default=True))
    outputs = (Output(BOOLEAN, name="contains"),)

    def run(self, ctx: RunContext, string: str, substring: str, case_sensitive: bool) -> tuple[bool]:
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


class StringCompare(Node):
    """Whether string_a starts with, ends with or equals string_b."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Compare"
    inputs = (_text("string_a"), _text("string_b"), Input("mode", COMBO, choices=COMPARE_MODES),
              Input("case_sensitive", BOOLEAN, default=True))
    outputs = (Output(BOOLEAN),)

    def run(self, ctx: RunContext, string_a: str, string_b: str, mode: str, case_sensitive: bool) -> tuple[bool]:
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        if mode == "Starts With":
            return (string_a.startswith(string_b),)
        if mode == "Ends With":
            return (string_a.endswith(string_b),)
        return (string_a == string_b,)


# --- regular expressions -------------------------------------------------------------------------

def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool) -> re.RegexFlag:
    """The ``re`` flags for the regex nodes' three switches."""
    flags = re.RegexFlag(0)
    if case_insensitive:
        flags |= re.IGNORECASE
    if multiline:
        flags |= re.MULTILINE
    if dotall:
        flags |= re.DOTALL
    return flags


def _pattern_problem(pattern: str, flags: re.RegexFlag) -> str | None:
    """Why ``pattern`` does not compile, as a message naming the input; None if it does."""
    try:
        re.compile(pattern, flags)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        return (f"input 'regex_pattern' is not a valid regular expression ({exc.msg}{where} in "
                f"{pattern!r}); fix the pattern, or escape special characters such as ( [ * + ? with a backslash")
    return None


def compile_pattern(node: str, pattern: str, flags: re.RegexFlag) -> re.Pattern[str]:
    """``re.compile``, or a LoomError naming the node and the input."""
    problem = _pattern_problem(pattern, flags)
    if problem is not None:
        raise LoomError(f"{node}: {problem}")
    return re.compile(pattern, flags)


def _literal_flags(inputs: Mapping[str, Any], defaults: tuple[bool, bool, bool]) -> re.RegexFlag:
    names = ("case_insensitive", "multiline", "dotall")
    values = [inputs.get(name, default) for name, default in zip(names, defaults, strict=True)]
    return regex_flags(*(bool(v) for v in values))


def _regex_inputs(optional: bool = False) -> tuple[Input, ...]:
    """The three switches every regex node has (RegexReplace's are optional and carry a tooltip)."""
    dotall_tip = ("When enabled, the dot (.) character will match any character including newline characters. "
                  "When disabled, dots won't match newlines.") if optional else ""
    return (Input("case_insensitive", BOOLEAN, default=True, optional=optional),
            Input("multiline", BOOLEAN, default=False, optional=optional),
            Input("dotall", BOOLEAN, default=False, optional=optional, tooltip=dotall_tip))


class _RegexNode(Node):
    """Shared: a literal ``regex_pattern`` is compiled at validation, so a bad one stops the prompt early."""

    @classmethod
    def validate_inputs(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        pattern = inputs.get("regex_pattern")
        if not isinstance(pattern, str):
            return None  # linked: checked when the node runs
        return _pattern_problem(pattern, _literal_flags(inputs, (True, False, False)))


class RegexMatch(_RegexNode):
    """Whether the pattern matches anywhere in the string (``re.search``)."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Regex Match"
    inputs = (_text("string"), _text("regex_pattern"), *_regex_inputs())
    outputs = (Output(BOOLEAN, name="matches"),)

    def run(self, ctx: RunContext, string: str, regex_pattern: str, case_insensitive: bool, multiline: bool,
            dotall: bool) -> tuple[bool]:
        pattern = compile_pattern("RegexMatch", regex_pattern, regex_flags(case_insensitive, multiline, dotall))
        return (pattern.search(string) is not None,)


def _group(match: re.Match[str], index: int) -> str:
    """Group ``index`` of a match; a group that took no part in it is the empty string."""
    value = match.group(index)
    return value if value is not None else ""


def extract(pattern: re.Pattern[str], string: str, mode: str, group_index: int) -> str:
    """RegexExtract's four modes, with ComfyUI's results.

    "All Matches" gives each whole match, or its first group when the pattern has groups (what
    ``re.findall`` reports). A group index past the pattern's groups gives nothing.
    """
    in_range = pattern.groups >= group_index
    if mode == "First Match":
        match = pattern.search(string)
        return match.group(0) if match else ""
    if mode == "All Matches":
        index = 1 if pattern.groups else 0
        return _JOIN.join(_group(m, index) for m in pattern.finditer(string))
    if mode == "First Group":
        match = pattern.search(string)
        return _group(match, group_index) if match and in_range else ""
    if mode == "All Groups":
        if not pattern.groups or not in_range:
            return ""
        return _JOIN.join(_group(m, group_index) for m in pattern.finditer(string))
    return ""


class RegexExtract(_RegexNode):
    """Extract the first or every match, or one group of the first or every match; several join with newlines."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Regex Extract"
    inputs = (_text("string"), _text("regex_pattern"), Input("mode", COMBO, choices=EXTRACT_MODES),
              *_regex_inputs(), Input("group_index", INT, default=1, min=0, max=100))
    outputs = (Output(STRING),)

    def run(self, ctx: RunContext, string: str, regex_pattern: str, mode: str, case_insensitive: bool,
            multiline: bool, dotall: bool, group_index: int) -> tuple[str]:
        pattern = compile_pattern("RegexExtract", regex_pattern, regex_flags(case_insensitive, multiline, dotall))
        return (extract(pattern, string, mode, group_index),)


_COUNT_TIP = ("Maximum number of replacements to make. Set to 0 to replace all occurrences (default). "
              "Set to 1 to replace only the first match, 2 for the first two matches, etc.")


class RegexReplace(_RegexNode):
    """Find and replace text using regex patterns."""

    python_module = _MODULE
    category = _CATEGORY
    display_name = "Regex Replace"
    description = "Find and replace text using regex patterns."
    inputs = (_text("string"), _text("regex_pattern"), _text("replace"), *_regex_inputs(optional=True),
              Input("count", INT, default=0, min=0, max=100, optional=True, tooltip=_COUNT_TIP))
    outputs = (Output(STRING),)

    @classmethod
    def validate_inputs(cls, folders: Folders, inputs: Mapping[str, Any]) -> str | None:
        problem = super().validate_inputs(folders, inputs)
        pattern, replace = inputs.get("regex_pattern"), inputs.get("replace")
        if problem is None and isinstance(pattern, str) and isinstance(replace, str):
            flags = _literal_flags(inputs, (True, False, False))
            problem = _replacement_problem(re.compile(pattern, flags), replace)
        return problem

    def run(self, ctx: RunContext, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
            multiline: bool = False, dotall: bool = False, count: int = 0) -> tuple[str]:
        pattern = compile_pattern("RegexReplace", regex_pattern, regex_flags(case_insensitive, multiline, dotall))
        problem = _replacement_problem(pattern, replace)
        if problem is not None:
            raise LoomError(f"RegexReplace: {problem}")
        return (pattern.sub(replace, string, count=count),)


def _replacement_problem(pattern: re.Pattern[str], replace: str) -> str | None:
    """Why ``replace`` is not a valid replacement for ``pattern`` (Python checks it before matching)."""
    try:
        pattern.sub(replace, "")
    except re.error as exc:
        return (f"input 'replace' is not a valid replacement ({exc.msg} in {replace!r}); refer only "
                "to groups the pattern has, as \\1 or \\g<name>, and write a literal backslash as \\\\")
    return None


STRING_NODES: tuple[type[Node], ...] = (
    StringConcatenate, StringSubstring, StringLength, CaseConverter, StringTrim, StringReplace, StringContains,
    StringCompare, RegexMatch, RegexExtract, RegexReplace)
