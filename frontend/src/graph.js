// @ts-check
// The graph's editor-format JSON: first-open default, localStorage auto-save, workflow files.

const STORAGE_KEY = "loom.workflow";

/** Load the saved graph, or the server's default workflow on first open. */
export async function loadInitial(graph, api) {
  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved) {
    try {
      graph.configure(JSON.parse(saved));
      return "restored the last graph";
    } catch (error) {
      console.warn("saved graph unreadable, loading the default", error);
    }
  }
  graph.configure(await api.defaultWorkflow());
  return "loaded the default workflow";
}

export function autoSave(graph) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(graph.serialize()));
}

/** Offer the graph as a .json file download. */
export function downloadWorkflow(graph, name = "workflow.json") {
  const blob = new Blob([JSON.stringify(graph.serialize(), null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

/** Load an editor-format workflow file into the graph. */
export async function loadWorkflowFile(graph, file) {
  loadWorkflowData(graph, JSON.parse(await file.text()), file.name);
}

/** Load an editor-format workflow object into the graph; `source` names it in the error. */
export function loadWorkflowData(graph, data, source = "the data") {
  if (!Array.isArray(data?.nodes)) throw new Error(`${source} is not an editor workflow (no "nodes")`);
  graph.configure(data);
}
