// @ts-check
// Multiline STRING widgets (prompts) are edited in a <textarea> laid over the widget:
// blur or Ctrl+Enter commits, Esc cancels (canvas-keys.js lists these for the help).
import { el } from "./dom.js";

/** @typedef {import("litegraph").LGraphCanvas} LGraphCanvas */
/** @typedef {import("litegraph").LGraphNode} LGraphNode */

const MIN_HEIGHT = 120;

/** @type {HTMLTextAreaElement | null} */
let open = null;

/** @param {HTMLTextAreaElement} textarea @param {LGraphCanvas} canvas @param {LGraphNode} node @param {any} widget */
function place(textarea, canvas, node, widget) {
  const rect = canvas.canvas.getBoundingClientRect();
  const margin = 15;
  const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0] + margin, node.pos[1] + (widget.last_y ?? 0)]);
  const scale = canvas.ds.scale;
  const width = Math.max(200, (node.size[0] - 2 * margin) * scale);
  const height = Math.max(MIN_HEIGHT, (node.size[1] - (widget.last_y ?? 0) - 6) * scale);
  Object.assign(textarea.style, {
    position: "fixed", zIndex: "1000", boxSizing: "border-box",
    left: `${Math.max(0, rect.left + x)}px`, top: `${Math.max(rect.top, rect.top + y)}px`,
    width: `${width}px`, height: `${height}px`, maxWidth: `${Math.max(200, rect.right - rect.left - x)}px`,
    font: "13px system-ui, sans-serif", color: "#eee", background: "#1e1e1e",
    border: "1px solid #6a8fd8", borderRadius: "4px", padding: "6px", resize: "both", outline: "none",
  });
}

/**
 * Open the editor for `widget` of `node`; only one is open at a time.
 * @param {LGraphCanvas} canvas @param {LGraphNode} node @param {any} widget
 */
export function openTextEditor(canvas, node, widget) {
  open?.blur();
  const textarea = el("textarea", {
    className: "loom-text-editor", value: String(widget.value ?? ""), spellcheck: false, "aria-label": widget.name,
  });
  place(textarea, canvas, node, widget);
  let done = false;
  const close = (commit) => {
    if (done) return;
    done = true;
    if (commit && textarea.value !== widget.value) {
      if (typeof widget.setValue === "function") widget.setValue(textarea.value, { e: undefined, node, canvas });
      else { widget.value = textarea.value; widget.callback?.(widget.value, canvas, node); }
    }
    if (open === textarea) open = null;
    textarea.remove();
    canvas.setDirty(true, true);
    canvas.canvas.focus();
  };
  textarea.addEventListener("blur", () => close(true));
  textarea.addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Escape") { e.preventDefault(); close(false); }
    else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); close(true); }
  });
  document.body.append(textarea);
  open = textarea;
  textarea.focus();
  return textarea;
}

/** Make a multiline text widget open the textarea instead of litegraph's one-line prompt. */
export function useTextEditor(widget) {
  widget.onPointerDown = (pointer, node, canvas) => {
    pointer.onClick = () => openTextEditor(canvas, node, widget);
    return true;
  };
}
