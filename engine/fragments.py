"""Validating the graph fragment a node expands into (the executor's side of engine/expansion.py).

A fragment is an API-format graph whose links may point at its own nodes or at nodes of the prompt
that runs it. It is validated like a prompt, against the nodes already validated, so a broken
fragment is an error of the node that returned it, naming the inner node and input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import MalformedNode, ValidationFailed
from engine.folders import Folders
from engine.registry import NodeRegistry
from engine.validate import GraphNode, _Validator
from engine.workflow import is_link, parse_api_prompt


def validate_fragment(
    fragment: Mapping[str, Any],
    prompt: Mapping[str, dict[str, Any]],
    nodes: Mapping[str, GraphNode],
    registry: NodeRegistry,
    folders: Folders,
) -> dict[str, GraphNode]:
    """The newly validated nodes: the fragment's, and any node of ``prompt`` it links to that was
    not validated before. Raises ValidationFailed naming every problem.

    ``prompt`` is the raw prompt (and earlier fragments) the fragment may link into; ``nodes`` the
    ones of them already validated.
    """
    parsed = parse_api_prompt(fragment)
    clashes = sorted(set(parsed) & set(prompt))
    if clashes:
        raise ValidationFailed([MalformedNode(clashes[0], f"the expanded graph reuses node id(s) {clashes[:5]} "
                                              "that already exist; give expanded nodes unique ids "
                                              "(ctx.graph_builder() does)")])
    checker = _Validator({**prompt, **parsed}, registry, folders)
    checker.nodes.update(nodes)
    checker.valid.update(dict.fromkeys(nodes, True))
    for node_id in parsed:
        checker.validate_from(node_id)
    if checker.errors:
        raise ValidationFailed(checker.errors)
    return {node_id: node for node_id, node in checker.nodes.items() if node_id not in nodes}

def result_links(values: tuple[Any, ...]) -> list[tuple[str, int]]:
    """The links ``[node_id, index]`` among an expanding node's returned values."""
    return [(str(value[0]), int(value[1])) for value in values if is_link(value)]
