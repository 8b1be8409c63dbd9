// @ts-check
// The editor page: canvas, toolbar, keyboard shortcuts and the server's execution events.
import { LGraph, LGraphCanvas } from "litegraph";
import { Api } from "./api.js";
import { TYPE_COLORS, applySeedControls, refreshCombos, registerNodes } from "./nodes.js";
import { autoSave, downloadWorkflow, loadInitial, loadWorkflowData, loadWorkflowFile, openGraph } from "./graph.js";
import { state } from "./overlay.js";
import { setupDrop } from "./files.js";
import { downloadApiPrompt } from "./export.js";
import { initQueuePanel } from "./queue-panel.js";
import { initHelp } from "./help.js";
import { initHistory } from "./history.js";
import { initGroups } from "./groups.js";
import { initPalette } from "./palette.js";

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const api = new Api();
const graph = new LGraph();
const canvasElement = /** @type {HTMLCanvasElement} */ ($("graph-canvas"));
const canvas = new LGraphCanvas(canvasElement, graph);
canvas.show_info = false;
canvas.render_canvas_border = false; // a stray blue frame at the first viewport
canvas.low_quality_zoom_threshold = 0.5; // keep titles and widgets readable when fitted beside the palette
canvas.default_connection_color_byType = { ...TYPE_COLORS };
/** Test and debugging hook: outputs are image URLs per node id. */
const loom = { api, graph, canvas, state, fitView, outputs: {}, status: "", queued: [], ready: false, history: /** @type {any} */ (null) };
Object.assign(window, { loom });

let statusSerial = 0; // counts status lines, so that a late "queued" does not hide a newer one

function setStatus(text, isError = false) {
  statusSerial++;
  loom.status = text;
  $("status").textContent = text;
  $("status").title = text; // the whole line on hover when the toolbar cuts it short
  $("status").classList.toggle("error", isError);
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
  const title = 30, margin = 20;
  const boxes = [...graph._nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]),
    ...(graph.groups || []).map((g) => [...g._bounding])];
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

function setProgress(fraction) {
  state.progress = fraction;
  $("progress-bar").style.width = `${Math.round(fraction * 100)}%`;
  redraw();
}

function showNodeErrors(nodeErrors) {
  for (const [id, entry] of Object.entries(nodeErrors || {})) {
    const messages = (entry.errors || []).map((e) => [e.message, e.details].filter(Boolean).join(": "));
    state.errors.set(String(id), messages.join("; ") || "invalid input");
  }
  redraw();
}

async function queue() {
  const count = Math.max(1, Number(/** @type {HTMLInputElement} */ ($("batch-count")).value) || 1);
  state.errors.clear();
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
    const [node, others] = [state.running, state.runs.size - 1];
    const title = node === null ? "" : graph.getNodeById(node)?.title ?? node;
    setStatus(`running ${title}${others > 0 ? ` (and ${others} more prompt${others > 1 ? "s" : ""})` : ""}`);
  };
  const endRun = (detail) => {
    state.runs.delete(runOf(detail));
    const latest = [...state.runs.values()].pop();
    state.running = latest?.node ?? null;
    redraw();
  };
  api.addEventListener("connected", () => setStatus("connected"));
  api.addEventListener("disconnected", () => {
    state.runs.clear(); // the server says again what runs when the socket is back
    state.running = null;
    setStatus("disconnected from the server, reconnecting…", true);
  });
  api.addEventListener("status", (e) => {
    const remaining = e.detail?.status?.exec_info?.queue_remaining;
    // An emptied queue keeps the line saying how the last prompt ended when it did not finish.
    if (remaining !== undefined && !state.runs.size && !(ended && remaining === 0)) setStatus(`queue: ${remaining}`);
  });
  api.addEventListener("execution_start", (e) => {
    ended = "";
    if (!state.runs.size) state.errors.clear();
    state.runs.set(runOf(e.detail), { node: null, progress: 0 });
    setProgress(0);
  });
  api.addEventListener("executing", (e) => {
    const node = e.detail?.node ?? null;
    if (node === null) {
      endRun(e.detail);
      if (state.runs.size) showRunning();
      else if (!ended) setStatus("done");
      return;
    }
    state.running = String(node);
    state.runs.set(runOf(e.detail), { node: String(node), progress: 0 });
    setProgress(0);
    showRunning();
  });
  api.addEventListener("progress", (e) => {
    const fraction = e.detail.max ? e.detail.value / e.detail.max : 0;
    const run = state.runs.get(runOf(e.detail));
    if (run) run.progress = fraction;
    setProgress(fraction);
  });
  api.addEventListener("executed", (e) => {
    const id = String(e.detail.display_node ?? e.detail.node);
    const images = e.detail.output?.images || [];
    if (!images.length) return;
    const urls = images.map((image) => api.viewUrl(image));
    loom.outputs[id] = urls;
    state.images.set(id, urls.map((url) => {
      const img = new Image();
      img.onload = redraw;
      img.src = url;
      return img;
    }));
    redraw();
  });
  api.addEventListener("execution_error", (e) => {
    endRun(e.detail);
    state.errors.set(String(e.detail.node_id), `${e.detail.exception_type}: ${e.detail.exception_message}`);
    ended = "failed";
    setStatus(`failed: error in ${e.detail.node_type}: ${e.detail.exception_message}`, true);
    redraw();
  });
  api.addEventListener("execution_interrupted", (e) => {
    ended = "interrupted";
    endRun(e.detail);
    setStatus("interrupted");
  });
}

/** Export API button, file drops on the canvas and status lines of node uploads. */
function onFiles() {
  $("export-api-button").addEventListener("click", async () => {
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
  window.addEventListener("loom-status", (e) => setStatus(e.detail.text, e.detail.isError));
}

function onToolbar() {
  $("queue-button").addEventListener("click", queue);
  $("save-button").addEventListener("click", () => downloadWorkflow(graph));
  $("load-button").addEventListener("click", () => $("load-input").click());
  $("default-button").addEventListener("click", async () => {
    openGraph(graph, await api.defaultWorkflow());
    fitView();
    setStatus("loaded the default workflow");
  });
  $("refresh-button").addEventListener("click", async () => {
    refreshCombos(graph, await api.objectInfo());
    setStatus("model lists refreshed");
    redraw();
  });
  $("load-input").addEventListener("change", async (e) => {
    const input = /** @type {HTMLInputElement} */ (e.target);
    const file = input.files?.[0];
    input.value = "";
    if (!file) return;
    try {
      const format = await loadWorkflowFile(graph, api, file);
      fitView();
      setStatus(format === "API" ? `loaded ${file.name} (API format, laid out)` : `loaded ${file.name}`);
    } catch (error) {
      setStatus(`could not load ${file.name}: ${error.message}`, true);
    }
  });
  window.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); queue(); }
    else if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); downloadWorkflow(graph); }
    else if ((e.ctrlKey || e.metaKey) && e.key === "o") { e.preventDefault(); $("load-input").click(); }
  });
}

async function main() {
  resize();
  window.addEventListener("resize", resize);
  onToolbar();
  onFiles();
  initQueuePanel(api);
  initHelp();
  initGroups(graph, canvas);
  onEvents();
  try {
    registerNodes(await api.objectInfo());
    loom.palette = initPalette({ graph, canvas, fitView });
    const how = await loadInitial(graph, api);
    if (how.startsWith("loaded") || !restoreView()) fitView();
    setStatus(how);
  } catch (error) {
    setStatus(`could not start: ${error.message}`, true);
    return;
  }
  api.connect();
  loom.history = initHistory(graph, canvas);
  setInterval(() => autoSave(graph), 1000);
  window.addEventListener("beforeunload", () => autoSave(graph));
  redraw();
  loom.ready = true;
}

main();
