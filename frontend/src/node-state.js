// @ts-check
// What the server said about the graph's nodes: which run, their progress, their images and errors.
// One store; overlay.js draws it on the nodes and app.js redraws the canvas when it changes.
import { Store, withEntry, withoutEntry } from "./store.js";

/**
 * @typedef {object} NodeState
 * @property {ReadonlyMap<string, {node: string | null, progress: number}>} runs the prompts running now, by
 *   prompt id: the node each runs and that node's progress (0..1). One server runs one prompt at a time; a
 *   cluster front (`--cluster`) runs several, so several nodes can light up.
 * @property {string | null} running the node that started running last
 * @property {number} progress the progress reported last (the toolbar's bar)
 * @property {ReadonlyMap<string, HTMLImageElement[]>} images by node id
 * @property {ReadonlyMap<string, string>} errors by node id
 */

/** @type {Store<NodeState>} */
export const nodeState = new Store(/** @type {NodeState} */ ({
  runs: new Map(), running: null, progress: 0, images: new Map(), errors: new Map(),
}));

/** Forget everything about the nodes (another graph is opened; its nodes may reuse the ids). */
export function clearNodeState() {
  nodeState.set({ runs: new Map(), running: null, images: new Map(), errors: new Map() });
}

/** @param {string} id @param {HTMLImageElement[] | null} images the node's images; null removes them */
export function setNodeImages(id, images) {
  nodeState.set(({ images: all }) => ({ images: images ? withEntry(all, id, images) : withoutEntry(all, id) }));
}

/** @param {Iterable<[string, string]>} entries error messages by node id, added to those shown */
export function addNodeErrors(entries) {
  nodeState.set(({ errors }) => ({ errors: new Map([...errors, ...entries]) }));
}

export function clearNodeErrors() {
  nodeState.set({ errors: new Map() });
}

/** @param {string} promptId @param {string | null} node the node it runs now (null: none yet) */
export function setRun(promptId, node) {
  nodeState.set(({ runs, running }) => ({
    runs: withEntry(runs, promptId, { node, progress: 0 }), running: node ?? running, progress: 0,
  }));
}

/** @param {string} promptId @param {number} fraction the progress of its running node, 0..1 */
export function setRunProgress(promptId, fraction) {
  nodeState.set(({ runs }) => {
    const run = runs.get(promptId);
    return { runs: run ? withEntry(runs, promptId, { ...run, progress: fraction }) : runs, progress: fraction };
  });
}

/** The server no longer says what runs (disconnected); it does again when the socket is back. */
export function clearRuns() {
  nodeState.set({ runs: new Map(), running: null });
}

/** The prompt ended; the running node is then the latest other prompt's, if any. */
export function endRun(promptId) {
  nodeState.set(({ runs }) => {
    const rest = withoutEntry(runs, promptId);
    return { runs: rest, running: [...rest.values()].pop()?.node ?? null };
  });
}

/** The progress of the prompts running on this node (the furthest one), or undefined when none runs it. */
export function runningProgress(id) {
  let progress;
  for (const run of nodeState.get().runs.values()) {
    if (run.node === id) progress = Math.max(progress ?? 0, run.progress);
  }
  return progress;
}
