// @ts-check
// Undo/redo of graph edits: snapshots of graph.serialize() taken after changes, restored with configure().
import { registerCommand } from "./commands.js";
import { isTyping } from "./dom.js";

const LIMIT = 50;
const CHECK_DELAY_MS = 150;

/** The graph as a string, without the view (pan and zoom are no edits). */
function snapshot(graph) {
  const data = graph.serialize();
  if (data.extra) delete data.extra.ds;
  return JSON.stringify(data);
}

export class History {
  /** @param {import("litegraph").LGraph} graph @param {import("litegraph").LGraphCanvas} canvas */
  constructor(graph, canvas) {
    this.graph = graph;
    this.canvas = canvas;
    /** @type {string[]} */
    this.undoStack = [];
    /** @type {string[]} */
    this.redoStack = [];
    this.current = snapshot(graph);
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
  }

  /** Record the graph if it changed since the last snapshot; not while the user types in a field. */
  check() {
    clearTimeout(this.timer);
    if (isTyping(document.activeElement)) return;
    const now = snapshot(this.graph);
    if (now === this.current) return;
    this.undoStack.push(this.current);
    if (this.undoStack.length > LIMIT) this.undoStack.shift();
    this.redoStack = [];
    this.current = now;
  }

  /** Check a little later (after litegraph has finished handling the event). */
  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.check(), CHECK_DELAY_MS);
  }

  /** Forget every step, e.g. after loading a workflow file the user may not want to undo into. */
  reset() {
    this.undoStack = [];
    this.redoStack = [];
    this.current = snapshot(this.graph);
  }

  undo() {
    this.check();
    const previous = this.undoStack.pop();
    if (previous === undefined) return false;
    this.redoStack.push(this.current);
    this.restore(previous);
    return true;
  }

  redo() {
    this.check();
    const next = this.redoStack.pop();
    if (next === undefined) return false;
    this.undoStack.push(this.current);
    this.restore(next);
    return true;
  }

  /** Load a snapshot into the graph, keeping the canvas' pan and zoom. */
  restore(text) {
    const { offset, scale } = this.canvas.ds;
    const view = { offset: /** @type {[number, number]} */ ([...offset]), scale };
    this.canvas.deselectAll?.();
    this.graph.configure(JSON.parse(text));
    this.canvas.ds.offset = view.offset;
    this.canvas.ds.scale = view.scale;
    this.current = snapshot(this.graph);
    this.canvas.setDirty(true, true);
  }
}

/**
 * Start recording edits and register undo (Ctrl+Z) and redo (Ctrl+Shift+Z, Ctrl+Y); reset() it once the
 * graph is loaded.
 * @param {import("litegraph").LGraph} graph @param {import("litegraph").LGraphCanvas} canvas
 */
export function initHistory(graph, canvas) {
  const history = new History(graph, canvas);
  const schedule = () => history.schedule();
  for (const type of ["pointerup", "keyup", "change", "focusout", "drop"]) {
    window.addEventListener(type, schedule, true);
  }
  registerCommand({
    id: "history.undo", label: "Undo the last graph edit", section: "Edit", keys: ["Mod+Z"],
    run: () => history.undo(),
  });
  registerCommand({
    id: "history.redo", label: "Redo", section: "Edit", keys: ["Mod+Shift+Z", "Mod+Y"],
    run: () => history.redo(),
  });
  return history;
}
