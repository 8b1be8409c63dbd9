// @ts-check
// What litegraph's canvas and the prompt text box (text-editor.js) do by themselves with keys and the
// mouse. They handle these in their own listeners; the commands carry no `run` and are registered only so
// that the help overlay lists them beside the editor's own shortcuts.
import { registerCommand } from "./commands.js";

/** @type {import("./commands.js").Command[]} */
const BUILT_IN = [
  { id: "text.edit", section: "Edit", gesture: "Click a prompt",
    label: "Edit it in a text box (Ctrl+Enter or click away: keep; Esc: cancel)" },
  { id: "canvas.copy-paste", section: "Edit", keys: ["Mod+C", "Mod+V"], label: "Copy / paste the selected nodes" },
  { id: "canvas.paste-linked", section: "Edit", keys: ["Mod+Shift+V"], label: "Paste, keeping the input links" },
  { id: "canvas.select-all", section: "Edit", keys: ["Mod+A"], label: "Select all nodes" },
  { id: "canvas.delete", section: "Edit", keys: ["Delete", "Backspace"], label: "Remove the selected nodes" },
  { id: "canvas.search", section: "Canvas", gesture: "Double-click canvas", label: "Search and add a node" },
  { id: "canvas.menu", section: "Canvas", gesture: "Right-click", label: "Node or canvas menu" },
  { id: "canvas.select-add", section: "Canvas", gesture: "Shift+click", label: "Add a node to the selection" },
  { id: "canvas.select-box", section: "Canvas", gesture: "Ctrl+drag", label: "Select nodes in a rectangle" },
  { id: "canvas.pan", section: "Canvas", gesture: "Drag empty canvas", label: "Pan" },
  { id: "canvas.pan-anywhere", section: "Canvas", gesture: "Space+drag / middle drag", label: "Pan" },
  { id: "canvas.zoom", section: "Canvas", gesture: "Wheel", label: "Zoom" },
  { id: "canvas.close-menu", section: "Help", keys: ["Escape"], label: "Close a menu or the node search" },
];

/** Register litegraph's and the text box's own keys and gestures (for the help; nothing to run). */
export function registerCanvasKeys() {
  for (const command of BUILT_IN) registerCommand(command);
}
