"""The string and regex nodes: ComfyUI's results on real text, and Loom's errors for bad patterns."""

from __future__ import annotations

from typing import Any

import pytest

from engine import errors
from engine.cache import OutputCache
from engine.context import RunContext
from engine.events import ListSink
from engine.executor import Executor
from engine.folders import Folders
from engine.registry import NodeRegistry
from engine.sdk import LoomError
from engine.validate import validate_prompt
from nodes import register_builtin_nodes
from nodes.strings import (
    CaseConverter,
    RegexExtract,
    RegexMatch,
    RegexReplace,
    StringCompare,
    StringConcatenate,
    StringContains,
    StringLength,
    StringReplace,
    StringSubstring,
    StringTrim,
)

FLAGS = {"case_insensitive": True, "multiline": False, "dotall": False}


def test_concatenate_puts_the_delimiter_between(ctx: RunContext) -> None:
    assert StringConcatenate().run(ctx, string_a="a", string_b="b", delimiter=", ") == ("a, b",)
    assert StringConcatenate().run(ctx, string_a="", string_b="", delimiter="-") == ("-",)


@pytest.mark.parametrize(("start", "end", "expected"), [
    (0, 3, "hel"), (-3, 100, "rld"), (3, 1, ""), (0, -1, "hello worl"), (50, 60, "")])
def test_substring_is_python_slicing(ctx: RunContext, start: int, end: int, expected: str) -> None:
    assert StringSubstring().run(ctx, string="hello world", start=start, end=end) == (expected,)


def test_length_counts_code_points(ctx: RunContext) -> None:
    assert StringLength().run(ctx, string="") == (0,)
    assert StringLength().run(ctx, string="héllo 🙂") == (7,)
    assert StringLength().run(ctx, string="e\u0301") == (2,)  # a combining accent is its own code point


@pytest.mark.parametrize(("mode", "expected"), [
    ("UPPERCASE", "HELLO WORLD STRASSE"), ("lowercase", "hello world straße"),
    ("Capitalize", "Hello world straße"), ("Title Case", "Hello World Straße")])
def test_case_converter_modes(ctx: RunContext, mode: str, expected: str) -> None:
    assert CaseConverter().run(ctx, string="hELLO wORLD straße", mode=mode) == (expected,)


@pytest.mark.parametrize(("mode", "expected"), [("Both", "a b"), ("Left", "a b \n"), ("Right", "\t a b")])
def test_trim_modes(ctx: RunContext, mode: str, expected: str) -> None:
    assert StringTrim().run(ctx, string="\t a b \n", mode=mode) == (expected,)


def test_replace_is_literal_text_not_a_pattern(ctx: RunContext) -> None:
    assert StringReplace().run(ctx, string="a.b.c", find=".", replace="-") == ("a-b-c",)
    assert StringReplace().run(ctx, string="abc", find="", replace="|") == ("|a|b|c|",)


def test_contains_with_and_without_case(ctx: RunContext) -> None:
    assert StringContains().run(ctx, string="Hello", substring="hell", case_sensitive=True) == (False,)
    assert StringContains().run(ctx, string="Hello", substring="hell", case_sensitive=False) == (True,)
    assert StringContains().run(ctx, string="x", substring="", case_sensitive=True) == (True,)


@pytest.mark.parametrize(("mode", "case_sensitive", "b", "expected"), [
    ("Starts With", True, "Foo", True), ("Starts With", True, "foo", False), ("Starts With", False, "foo", True),
    ("Ends With", True, "Bar", True), ("Ends With", True, "Foo", False),
    ("Equal", True, "foobar", False), ("Equal", False, "foobar", True)])
def test_compare_modes(ctx: RunContext, mode: str, case_sensitive: bool, b: str, expected: bool) -> None:
    result = StringCompare().run(ctx, string_a="FooBar", string_b=b, mode=mode, case_sensitive=case_sensitive)
    assert result == (expected,)


def test_regex_match_flags(ctx: RunContext) -> None:
    node = RegexMatch()
    assert node.run(ctx, string="Hello", regex_pattern="^hello$", **FLAGS) == (True,)
    assert node.run(ctx, string="Hello", regex_pattern="^hello$", **{**FLAGS, "case_insensitive": False}) == (False,)
    assert node.run(ctx, string="a\nb", regex_pattern="^b", **FLAGS) == (False,)
    assert node.run(ctx, string="a\nb", regex_pattern="^b", **{**FLAGS, "multiline": True}) == (True,)
    assert node.run(ctx, string="a\nb", regex_pattern="a.b", **FLAGS) == (False,)
    assert node.run(ctx, string="a\nb", regex_pattern="a.b", **{**FLAGS, "dotall": True}) == (True,)
    assert node.run(ctx, string="", regex_pattern="", **FLAGS) == (True,)  # the empty pattern matches anywhere


def test_regex_is_unicode_aware(ctx: RunContext) -> None:
    assert RegexMatch().run(ctx, string="ÉCOLE", regex_pattern="école", **FLAGS) == (True,)
    assert _extract(ctx, "naïve café 東京", r"\w+", "All Matches") == "naïve\ncafé\n東京"


def _extract(ctx: RunContext, string: str, pattern: str, mode: str, group_index: int = 1, **flags: bool) -> str:
    result = RegexExtract().run(ctx, string=string, regex_pattern=pattern, mode=mode, group_index=group_index,
                                **{**FLAGS, **flags})
    return str(result[0])


def test_regex_extract_first_and_all_matches(ctx: RunContext) -> None:
    text = "size 512x768, then 1024x1024"
    assert _extract(ctx, text, r"\d+x\d+", "First Match") == "512x768"
    assert _extract(ctx, text, r"\d+x\d+", "All Matches") == "512x768\n1024x1024"
    assert _extract(ctx, text, r"(\d+)x(\d+)", "All Matches") == "512\n1024"  # findall: the first group
    assert _extract(ctx, text, r"nothing", "First Match") == ""
    assert _extract(ctx, text, r"nothing", "All Matches") == ""


def test_regex_extract_groups(ctx: RunContext) -> None:
    text = "w=512 h=768; w=64 h=32"
    assert _extract(ctx, text, r"w=(\d+) h=(\d+)", "First Group", 2) == "768"
    assert _extract(ctx, text, r"w=(\d+) h=(\d+)", "All Groups", 1) == "512\n64"
    assert _extract(ctx, text, r"w=(\d+) h=(\d+)", "First Group", 0) == "w=512 h=768"
    assert _extract(ctx, text, r"w=(\d+) h=(\d+)", "All Groups", 0) == "w=512 h=768\nw=64 h=32"


def test_regex_extract_group_index_out_of_range_gives_nothing(ctx: RunContext) -> None:
    assert _extract(ctx, "w=512", r"w=(\d+)", "First Group", 2) == ""
    assert _extract(ctx, "w=512", r"w=(\d+)", "All Groups", 5) == ""
    assert _extract(ctx, "w=512", r"w=\d+", "All Groups", 0) == ""  # no groups: All Groups has nothing
    assert _extract(ctx, "w=512", r"w=\d+", "First Group", 0) == "w=512"


def test_regex_extract_group_that_did_not_take_part_is_empty(ctx: RunContext) -> None:
    assert _extract(ctx, "ab", r"(x)?(a)", "First Group", 1) == ""
    assert _extract(ctx, "a b", r"(x)?(a|b)", "All Groups", 1) == "\n"
    assert _extract(ctx, "a b", r"(x)?(a|b)", "All Matches") == "\n"


def test_regex_extract_empty_matches(ctx: RunContext) -> None:
    assert _extract(ctx, "ab", "", "All Matches") == "\n\n"  # findall('', 'ab') == ['', '', '']
    assert _extract(ctx, "ab", "x*", "First Match") == ""
    assert _extract(ctx, "", "", "First Match") == ""


def _replace(ctx: RunContext, string: str, pattern: str, replace: str, **options: Any) -> str:
    return str(RegexReplace().run(ctx, string=string, regex_pattern=pattern, replace=replace, **options)[0])


def test_regex_replace_defaults_are_comfyui_s(ctx: RunContext) -> None:
    assert _replace(ctx, "Cat cat CAT", "cat", "dog") == "dog dog dog"  # case-insensitive, every match
    assert _replace(ctx, "Cat cat CAT", "cat", "dog", case_insensitive=False) == "Cat dog CAT"
    assert _replace(ctx, "a a a", "a", "b", count=2) == "b b a"


def test_regex_replace_groups_and_flags(ctx: RunContext) -> None:
    assert _replace(ctx, "512x768", r"(\d+)x(\d+)", r"\2x\1") == "768x512"
    assert _replace(ctx, "a\nb", r"^", "> ", multiline=True) == "> a\n> b"
    assert _replace(ctx, "a\nb", r"a.b", "ab", dotall=True) == "ab"
    assert _replace(ctx, "ab", "", "-") == "-a-b-"


@pytest.mark.parametrize(("node", "inputs"), [
    (RegexMatch, {"string": "x", "regex_pattern": "(unclosed", **FLAGS}),
    (RegexExtract, {"string": "x", "regex_pattern": "[a-", "mode": "First Match", "group_index": 1, **FLAGS}),
    (RegexReplace, {"string": "x", "regex_pattern": "*", "replace": ""})])
def test_invalid_pattern_names_node_and_input(ctx: RunContext, node: type[Any], inputs: dict[str, Any]) -> None:
    with pytest.raises(LoomError) as caught:
        node().run(ctx, **inputs)
    message = str(caught.value)
    assert message.startswith(f"{node.__name__}: input 'regex_pattern' is not a valid regular expression")
    assert "position" in message


def test_invalid_replacement_names_the_replace_input(ctx: RunContext) -> None:
    with pytest.raises(LoomError, match=r"RegexReplace: input 'replace' .*invalid group reference"):
        _replace(ctx, "abc", "(b)", r"\2")


@pytest.fixture
def registry() -> NodeRegistry:
    made = NodeRegistry()
    register_builtin_nodes(made)
    return made


def _prompt(class_type: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"1": {"class_type": class_type, "inputs": inputs},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


@pytest.mark.parametrize(("pattern", "replace", "expected"), [
    ("(a", "x", "input 'regex_pattern'"), ("(a)", r"\3", "input 'replace'"), ("(a)", r"\q", "input 'replace'")])
def test_literal_bad_pattern_or_replacement_stops_the_prompt(
        registry: NodeRegistry, folders: Folders, pattern: str, replace: str, expected: str) -> None:
    prompt = _prompt("RegexReplace", {"string": "abc", "regex_pattern": pattern, "replace": replace})
    with pytest.raises(errors.ValidationFailed) as caught:
        validate_prompt(prompt, registry, folders)
    message = caught.value.errors[0].message
    assert "(RegexReplace)" in message and expected in message


def test_match_and_extract_check_literal_patterns_before_running(registry: NodeRegistry, folders: Folders) -> None:
    good = _prompt("RegexMatch", {"string": "a", "regex_pattern": "a|b", **FLAGS})
    assert validate_prompt(good, registry, folders).outputs == ["2"]
    bad = _prompt("RegexExtract", {"string": "a", "regex_pattern": "a{2,1}", "mode": "First Match",
                                   "group_index": 1, **FLAGS})
    with pytest.raises(errors.ValidationFailed, match="regex_pattern"):
        validate_prompt(bad, registry, folders)


def test_linked_pattern_is_checked_when_the_node_runs(registry: NodeRegistry, folders: Folders) -> None:
    prompt = {"0": {"class_type": "PrimitiveString", "inputs": {"value": "(bad"}},
              **_prompt("RegexMatch", {"string": "a", "regex_pattern": ["0", 0], **FLAGS})}
    assert validate_prompt(prompt, registry, folders).outputs == ["2"]  # linked: not known before running
    outcome = Executor(registry, folders, OutputCache(2**20, 100)).execute(prompt, "p", ListSink())
    assert outcome.status_str == "error" and outcome.error is not None
    assert outcome.error.node_id == "1"
    assert "RegexMatch: input 'regex_pattern' is not a valid regular expression" in outcome.error.message
