// @ts-check
// The graph's editor-format JSON: first-open default, localStorage auto-save, workflow files.
import { downloadJson } from "./dom.js";
import { clearNodeState } from "./node-state.js";

/** @typedef {import("litegraph").LGraph} LGraph */

const STORAGE_KEY = "loom.workflow";

/**
 * Replace the graph with another workflow. What the server said about the old nodes (images, errors,
 * the running one) is dropped first, so that it does not show on new nodes that reuse their ids.
 * @param {LGraph} graph @param {any} data an editor-format workflow
 */
export function openGraph(graph, data) {
  clearNodeState();
  graph.configure(data);
}

/**
 * Load the saved graph, or the server's default workflow on first open.
 * @param {LGraph} graph @param {import("./api.js").Api} api
 */
export async function loadInitial(graph, api) {
  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved) {
    try {
      openGraph(graph, JSON.parse(saved));
      return "restored the last graph";
    } catch (error) {
      console.warn("saved graph unreadable, loading the default", error);
    }
  }
  openGraph(graph, await api.defaultWorkflow());
  return "loaded the default workflow";
}

/** @param {LGraph} graph */
export function autoSave(graph) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(graph.serialize()));
}

/** Offer the graph as a .json file download. @param {LGraph} graph */
export function downloadWorkflow(graph, name = "workflow.json") {
  downloadJson(graph.serialize(), name);
}

/** Whether `data` is an API-format prompt: {id: {class_type, inputs}}. */
export function isApiPrompt(data) {
  if (!data || typeof data !== "object" || Array.isArray(data) || "nodes" in data) return false;
  const entries = Object.values(data);
  return entries.length > 0 && entries.every((n) => typeof n?.class_type === "string");
}

/**
 * Load a workflow file (editor or API format) into the graph.
 * @param {LGraph} graph @param {import("./api.js").Api} api @param {File} file
 */
export async function loadWorkflowFile(graph, api, file) {
  return loadWorkflowData(graph, api, JSON.parse(await file.text()), file.name);
}

/**
 * Load an editor-format workflow, or an API-format prompt laid out by the server, into the graph;
 * `source` names the data in the error. Resolves to "editor" or "API" (the format that was read).
 * @param {LGraph} graph @param {import("./api.js").Api} api @param {any} data
 */
export async function loadWorkflowData(graph, api, data, source = "the data") {
  if (isApiPrompt(data)) {
    openGraph(graph, await api.apiToWorkflow(data));
    return "API";
  }
  if (!Array.isArray(data?.nodes)) throw new Error(`${source} is neither an editor workflow nor an API prompt`);
  openGraph(graph, data);
  return "editor";
}
