// @ts-check
// Groups: Ctrl+G frames the selected nodes in a new group (as in ComfyUI); litegraph's canvas menu adds
// an empty one ("Add Group"), and dragging a group's title moves it with its nodes.
import { LGraphGroup, LGraphNode } from "litegraph";

const PADDING = 10;

function report(text, isError = false) {
  window.dispatchEvent(new CustomEvent("loom-status", { detail: { text, isError } }));
}

function isTyping(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

/** Frame the canvas's selected nodes in a new group titled `title`; returns it, or null with none selected. */
export function groupSelected(graph, canvas, title = "Group") {
  const nodes = [...canvas.selectedItems].filter((item) => item instanceof LGraphNode);
  if (!nodes.length) return null;
  const group = new LGraphGroup(title);
  graph.add(group);
  group.resizeTo(nodes, PADDING);
  group.recomputeInsideNodes();
  graph.setDirtyCanvas(true, true);
  return group;
}

/** Ctrl+G groups the selection. */
export function initGroups(graph, canvas) {
  window.addEventListener("keydown", (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.key.toLowerCase() !== "g" || e.shiftKey || isTyping(e.target)) return;
    e.preventDefault();
    const group = groupSelected(graph, canvas);
    if (group) report(`grouped ${group.children.size} nodes (right-click the group's title to rename it)`);
    else report("select nodes first (click, Shift+click or Ctrl+drag), then Ctrl+G groups them", true);
  });
}
