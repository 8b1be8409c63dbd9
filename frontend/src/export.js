// @ts-check
// Export API: the server converts the editor workflow (POST /loom/workflow/api) exactly as POST /prompt
// would before queueing it, so there is one conversion, engine/workflow.py's ui_to_api.

/** Offer the graph's API-format prompt as a .json download; rejects with the server's error. */
export async function downloadApiPrompt(graph, api, name = "workflow_api.json") {
  const prompt = await api.workflowToApi(graph.serialize());
  const blob = new Blob([JSON.stringify(prompt, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  return prompt;
}
