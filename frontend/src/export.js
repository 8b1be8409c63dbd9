// @ts-check
// Export API: the server converts the editor workflow (POST /loom/workflow/api) exactly as POST /prompt
// would before queueing it, so there is one conversion, engine/workflow.py's ui_to_api.
import { downloadJson } from "./dom.js";

/**
 * Offer the graph's API-format prompt as a .json download; rejects with the server's error.
 * @param {import("litegraph").LGraph} graph @param {import("./api.js").Api} api
 */
export async function downloadApiPrompt(graph, api, name = "workflow_api.json") {
  const prompt = await api.workflowToApi(graph.serialize());
  downloadJson(prompt, name);
  return prompt;
}
