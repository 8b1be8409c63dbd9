// @ts-check
// Groups: Ctrl+G frames the selected nodes in a new group (as in ComfyUI); litegraph's canvas menu adds
// an empty one ("Add Group"), and dragging a group's title moves it with its nodes.
import { LGraphGroup, LGraphNode } from "litegraph";
import { registerCommand } from "./commands.js";
import { reportStatus } from "./dom.js";

const PADDING = 10;

/**
 * Frame the canvas's selected nodes in a new group titled `title`; returns it, or null with none selected.
 * @param {import("litegraph").LGraph} graph @param {import("litegraph").LGraphCanvas} canvas
 */
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

/**
 * Ctrl+G groups the selection.
 * @param {import("litegraph").LGraph} graph @param {import("litegraph").LGraphCanvas} canvas
 */
export function initGroups(graph, canvas) {
  registerCommand({
    id: "groups.group", label: "Group the selected nodes (right-click canvas: Add Group)", section: "Edit",
    keys: ["Mod+G"],
    run: () => {
      const group = groupSelected(graph, canvas);
      if (group) reportStatus(`grouped ${group.children.size} nodes (right-click the group's title to rename it)`);
      else reportStatus("select nodes first (click, Shift+click or Ctrl+drag), then Ctrl+G groups them", true);
    },
  });
}
