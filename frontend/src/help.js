// @ts-check
// The keyboard and mouse help overlay: toolbar "?" button, "?" or F1 opens it, Esc or a click closes it.

/** What the editor (app.js) and litegraph do; keep in step with them. */
const SHORTCUTS = [
  ["Ctrl+Enter", "Queue the graph"],
  ["Ctrl+S", "Save the workflow to a file"],
  ["Ctrl+O", "Load a workflow file"],
  ["Ctrl+Z", "Undo the last graph edit"],
  ["Ctrl+Shift+Z / Ctrl+Y", "Redo"],
  ["Click a prompt", "Edit it in a text box (Ctrl+Enter or click away: keep; Esc: cancel)"],
  ["Double-click canvas", "Search and add a node"],
  ["Right-click", "Node or canvas menu"],
  ["Ctrl+C / Ctrl+V", "Copy / paste the selected nodes"],
  ["Ctrl+Shift+V", "Paste, keeping the input links"],
  ["Ctrl+A", "Select all nodes"],
  ["Ctrl+G", "Group the selected nodes (right-click canvas: Add Group)"],
  ["Delete / Backspace", "Remove the selected nodes"],
  ["Shift+click", "Add a node to the selection"],
  ["Ctrl+drag", "Select nodes in a rectangle"],
  ["Drag empty canvas", "Pan"],
  ["Space+drag / middle drag", "Pan"],
  ["Wheel", "Zoom"],
  ["? / F1", "This help"],
  ["Esc", "Close this help, a menu or the image view"],
];

/** @type {HTMLElement | null} */
let overlay = null;

function isTyping(target) {
  const name = target?.localName;
  return name === "input" || name === "textarea" || name === "select" || target?.isContentEditable;
}

export function closeHelp() {
  overlay?.remove();
  overlay = null;
}

export function openHelp() {
  if (overlay) return;
  overlay = document.createElement("div");
  overlay.id = "help-overlay";
  const card = document.createElement("div");
  card.className = "help-card";
  card.setAttribute("role", "dialog");
  card.setAttribute("aria-label", "Keyboard shortcuts");
  const heading = document.createElement("h2");
  heading.textContent = "Keyboard and mouse";
  const table = document.createElement("table");
  for (const [keys, what] of SHORTCUTS) {
    const row = table.insertRow();
    const key = document.createElement("kbd");
    key.textContent = keys;
    row.insertCell().append(key);
    row.insertCell().textContent = what;
  }
  const hint = document.createElement("p");
  hint.textContent = "Press Esc or click outside to close.";
  card.append(heading, table, hint);
  overlay.append(card);
  overlay.addEventListener("click", (e) => { if (e.target === overlay) closeHelp(); });
  document.body.append(overlay);
}

/** Add the toolbar button and the keys. */
export function initHelp() {
  const button = document.createElement("button");
  button.id = "help-button";
  button.textContent = "?";
  button.title = "Keyboard shortcuts (? or F1)";
  button.addEventListener("click", () => (overlay ? closeHelp() : openHelp()));
  document.getElementById("toolbar")?.append(button);
  window.addEventListener("keydown", (e) => {
    if (overlay && e.key === "Escape") { e.preventDefault(); e.stopPropagation(); closeHelp(); }
    else if (e.key === "F1" || (e.key === "?" && !e.ctrlKey && !e.metaKey && !isTyping(e.target))) {
      e.preventDefault();
      if (overlay) closeHelp(); else openHelp();
    }
  }, true);
}
