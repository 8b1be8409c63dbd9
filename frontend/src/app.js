// @ts-check
// The editor page: canvas, toolbar, the workflow commands and the server's execution events.
import { LGraph, LGraphCanvas, LiteGraph } from "litegraph";
import { Api } from "./api.js";
import { TYPE_COLORS, applySeedControls, refreshCombos, registerNodes } from "./nodes.js";
import { autoSave, downloadWorkflow, loadInitial, loadWorkflowData, loadWorkflowFile, openGraph } from "./graph.js";
import {
  addNodeErrors, clearNodeErrors, clearRuns, endRun, nodeState, setNodeImages, setRun, setRunProgress,
} from "./node-state.js";
import { bindButton, installKeymap, registerCommand } from "./commands.js";
import { registerCanvasKeys } from "./canvas-keys.js";
import { byId } from "./dom.js";
import { setupDrop } from "./files.js";
import { downloadApiPrompt } from "./export.js";
import { initQueuePanel } from "./queue-panel.js";
import { initHelp } from "./help.js";
import { initHistory } from "./history.js";
import { initGroups } from "./groups.js";
import { initLightbox } from "./lightbox.js";
import { initPalette } from "./palette.js";

const api = new Api();
const graph = new LGraph();
const canvasElement = byId("graph-canvas", HTMLCanvasElement);
const canvas = new LGraphCanvas(canvasElement, graph);
canvas.show_info = false;
canvas.render_canvas_border = false; // a stray blue frame at the first viewport
canvas.low_quality_zoom_threshold = 0.5; // keep titles and widgets readable when fitted beside the palette
canvas.default_connection_color_byType = { ...TYPE_COLORS };
/** Test and debugging hook: `state` is what the server said about the nodes; outputs are image URLs per node id. */
const loom = {
  api, graph, canvas, fitView,
  get state() { return nodeState.get(); },
  /** @type {Record<string, string[]>} */
  outputs: {},
  status: "",
  /** @type {string[]} ids of the prompts queued from this page */
  queued: [],
  ready: false,
  /** @type {import("./history.js").History | null} */
  history: null,
  /** @type {ReturnType<typeof initPalette> | null} */
  palette: null,
};
Object.assign(window, { loom });

let statusSerial = 0; // counts status lines, so that a late "queued" does not hide a newer one

function setStatus(text, isError = false) {
  statusSerial++;
  loom.status = text;
  const line = byId("status");
  line.textContent = text;
  line.title = text; // the whole line on hover when the toolbar cuts it short
  line.classList.toggle("error", isError);
}

function redraw() { canvas.setDirty(true, true); }

function resize() {
  const main = /** @type {HTMLElement} */ (canvasElement.parentElement);
  canvas.resize(main.clientWidth, main.clientHeight);
}

/** Below this zoom litegraph drops titles and widgets (low_quality_zoom_threshold), so fitting stops here. */
const READABLE_SCALE = 0.55;

/**
 * Zoom and pan so that every node and group is visible, never zooming in past 1:1 nor out past
 * READABLE_SCALE; a graph too large for that shows from its top-left corner.
 */
function fitView() {
  const title = LiteGraph.NODE_TITLE_HEIGHT, margin = 20;
  const boxes = [...graph.nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]),
    ...graph.groups.map((g) => [...g.boundingRect])];
  if (!boxes.length) return;
  const left = Math.min(...boxes.map((b) => b[0])), top = Math.min(...boxes.map((b) => b[1]));
  const right = Math.max(...boxes.map((b) => b[0] + b[2]));
  const bottom = Math.max(...boxes.map((b) => b[1] + b[3]));
  const scale = Math.max(READABLE_SCALE, Math.min(1, (canvasElement.width - 2 * margin) / (right - left),
    (canvasElement.height - 2 * margin) / (bottom - top)));
  canvas.ds.scale = scale;
  canvas.ds.offset = [margin / scale - left, margin / scale - top];
  redraw();
}

/** Pan and zoom to the view saved with a restored graph (extra.ds); false when there is none. */
function restoreView() {
  const ds = graph.extra?.ds;
  if (!Array.isArray(ds?.offset) || !(ds.scale > 0)) return false;
  canvas.ds.offset = [...ds.offset];
  canvas.ds.scale = ds.scale;
  redraw();
  return true;
}

/** The canvas redraws when what the server said about the nodes changes; the toolbar bar shows the progress. */
function onNodeState() {
  const bar = byId("progress-bar");
  nodeState.subscribe((now, before) => {
    if (now.progress !== before.progress) bar.style.width = `${Math.round(now.progress * 100)}%`;
    redraw();
  });
}

/** Show the validation errors of a refused prompt (its `node_errors`) on their nodes. */
function showNodeErrors(nodeErrors) {
  addNodeErrors(Object.entries(nodeErrors || {}).map(([id, entry]) => {
    const messages = (entry.errors || []).map((e) => [e.message, e.details].filter(Boolean).join(": "));
    return [String(id), messages.join("; ") || "invalid input"];
  }));
}

async function queue() {
  const count = Math.max(1, Number(byId("batch-count", HTMLInputElement).value) || 1);
  clearNodeErrors();
  for (let i = 0; i < count; i++) {
    try {
      const serial = statusSerial;
      const result = await api.queue(graph.serialize());
      loom.queued.push(result.prompt_id);
      if (serial === statusSerial) setStatus(`queued ${result.prompt_id.slice(0, 8)} (#${result.number})`);
      applySeedControls(graph);
    } catch (error) {
      const body = error.body || {};
      showNodeErrors(body.node_errors);
      setStatus(`not queued: ${error.message}`, true);
      break;
    }
  }
  redraw();
}

function onEvents() {
  let ended = ""; // "interrupted" or "failed": how the last prompt ended, when not "done"
  const runOf = (detail) => String(detail?.prompt_id ?? "");
  const showRunning = () => {
    const { running: node, runs } = nodeState.get();
    const others = runs.size - 1;
    const title = node === null ? "" : graph.getNodeById(node)?.title ?? node;
    setStatus(`running ${title}${others > 0 ? ` (and ${others} more prompt${others > 1 ? "s" : ""})` : ""}`);
  };
  const running = () => nodeState.get().runs.size;
  api.on("connected", () => setStatus("connected"));
  api.on("disconnected", () => {
    clearRuns(); // the server says again what runs when the socket is back
    setStatus("disconnected from the server, reconnecting…", true);
  });
  api.on("status", (detail) => {
    const remaining = detail?.status?.exec_info?.queue_remaining;
    // An emptied queue keeps the line saying how the last prompt ended when it did not finish.
    if (remaining !== undefined && !running() && !(ended && remaining === 0)) setStatus(`queue: ${remaining}`);
  });
  api.on("execution_start", (detail) => {
    ended = "";
    if (!running()) clearNodeErrors();
    setRun(runOf(detail), null);
  });
  api.on("executing", (detail) => {
    const node = detail?.node ?? null;
    if (node === null) {
      endRun(runOf(detail));
      if (running()) showRunning();
      else if (!ended) setStatus("done");
      return;
    }
    setRun(runOf(detail), String(node));
    showRunning();
  });
  api.on("progress", (detail) => setRunProgress(runOf(detail), detail.max ? detail.value / detail.max : 0));
  api.on("executed", (detail) => {
    const id = String(detail.display_node ?? detail.node);
    const images = detail.output?.images || [];
    if (!images.length) return;
    const urls = images.map((image) => api.viewUrl(image));
    loom.outputs[id] = urls;
    setNodeImages(id, urls.map((url) => {
      const img = new Image();
      img.onload = redraw;
      img.src = url;
      return img;
    }));
  });
  api.on("execution_error", (detail) => {
    endRun(runOf(detail));
    addNodeErrors([[String(detail.node_id), `${detail.exception_type}: ${detail.exception_message}`]]);
    ended = "failed";
    setStatus(`failed: error in ${detail.node_type}: ${detail.exception_message}`, true);
  });
  api.on("execution_interrupted", (detail) => {
    ended = "interrupted";
    endRun(runOf(detail));
    setStatus("interrupted");
  });
}

/** Export API button, file drops on the canvas and status lines of node uploads. */
function onFiles() {
  byId("export-api-button").addEventListener("click", async () => {
    try {
      await downloadApiPrompt(graph, api);
      setStatus("exported the API-format prompt");
    } catch (error) {
      setStatus(`could not export: ${error.message}`, true);
    }
  });
  const loadWorkflow = async (data, source) => {
    const format = await loadWorkflowData(graph, api, data, source);
    fitView();
    return format;
  };
  setupDrop(canvasElement, canvas, graph, { loadWorkflow, setStatus });
  window.addEventListener("loom-status", (e) => {
    const { text, isError } = /** @type {CustomEvent} */ (e).detail;
    setStatus(text, isError);
  });
}

/** The workflow commands (queue, save, load: their toolbar buttons and keys) and the other toolbar buttons. */
function onToolbar() {
  const loadInput = byId("load-input", HTMLInputElement);
  registerCommand({
    id: "workflow.queue", label: "Queue the graph", section: "Workflow", keys: ["Mod+Enter"], whileTyping: true,
    run: queue,
  });
  registerCommand({
    id: "workflow.save", label: "Save the workflow to a file", section: "Workflow", keys: ["Mod+S"],
    whileTyping: true, run: () => downloadWorkflow(graph),
  });
  registerCommand({
    id: "workflow.load", label: "Load a workflow file", section: "Workflow", keys: ["Mod+O"], whileTyping: true,
    run: () => loadInput.click(),
  });
  bindButton(byId("queue-button"), "workflow.queue");
  bindButton(byId("save-button"), "workflow.save");
  bindButton(byId("load-button"), "workflow.load");
  byId("default-button").addEventListener("click", async () => {
    openGraph(graph, await api.defaultWorkflow());
    fitView();
    setStatus("loaded the default workflow");
  });
  byId("refresh-button").addEventListener("click", async () => {
    refreshCombos(graph, await api.objectInfo());
    setStatus("model lists refreshed");
    redraw();
  });
  loadInput.addEventListener("change", async () => {
    const file = loadInput.files?.[0];
    loadInput.value = "";
    if (!file) return;
    try {
      const format = await loadWorkflowFile(graph, api, file);
      fitView();
      setStatus(format === "API" ? `loaded ${file.name} (API format, laid out)` : `loaded ${file.name}`);
    } catch (error) {
      setStatus(`could not load ${file.name}: ${error.message}`, true);
    }
  });
}

async function main() {
  resize();
  window.addEventListener("resize", resize);
  installKeymap();
  onToolbar();
  onFiles();
  onNodeState();
  initQueuePanel(api);
  loom.history = initHistory(graph, canvas);
  initGroups(graph, canvas);
  initHelp();
  initLightbox();
  registerCanvasKeys();
  onEvents();
  try {
    registerNodes(await api.objectInfo());
    loom.palette = initPalette({ graph, canvas, fitView });
    const how = await loadInitial(graph, api);
    loom.history.reset(); // the loaded graph is where undo stops
    if (how.startsWith("loaded") || !restoreView()) fitView();
    setStatus(how);
  } catch (error) {
    setStatus(`could not start: ${error.message}`, true);
    return;
  }
  api.connect();
  setInterval(() => autoSave(graph), 1000);
  window.addEventListener("beforeunload", () => autoSave(graph));
  redraw();
  loom.ready = true;
}

main();
