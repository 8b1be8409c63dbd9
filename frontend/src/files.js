// @ts-check
// Files in and out of the editor: LoadImage upload button, drag-and-drop of images onto
// LoadImage nodes, and of workflow PNGs / .json files onto the canvas.
import { el, reportStatus } from "./dom.js";
import { setNodeImages } from "./node-state.js";
import { pngTextChunks } from "./pngmeta.js";

/** @typedef {import("litegraph").LGraphNode & {onDropFile?: (file: File) => void, refreshPreview?: () => void}} UploadNode */

/** Extra height of a node that previews its input image. */
export const PREVIEW_HEIGHT = 180;

/**
 * POST a file to /upload/image; resolves to the server's {name, subfolder, type}.
 * @param {File} file
 */
export async function uploadImage(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("type", "input");
  form.append("overwrite", "true");
  const response = await fetch("/upload/image", { method: "POST", body: form });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error(data?.error?.message || `${response.status} ${response.statusText}`);
  return data;
}

function inputUrl(name) {
  const slash = name.lastIndexOf("/");
  const query = new URLSearchParams({
    filename: name.slice(slash + 1), subfolder: slash < 0 ? "" : name.slice(0, slash), type: "input",
  });
  return `/view?${query}`;
}

/**
 * Show the input image named by the node's image widget under its widgets.
 * @param {import("litegraph").LGraphNode} node @param {string} name
 */
export function showInputPreview(node, name) {
  const id = String(node.id);
  if (!name) { setNodeImages(id, null); return; }
  const img = new Image();
  img.onload = () => node.setDirtyCanvas(true, true);
  img.onerror = () => { setNodeImages(id, null); node.setDirtyCanvas(true, true); };
  img.src = inputUrl(name);
  setNodeImages(id, [img]);
}

/**
 * Upload `file` and make it the node's image: added to the combo's values, selected and previewed.
 * @param {import("litegraph").LGraphNode} node @param {any} combo the node's image combo widget @param {File} file
 */
export async function uploadToNode(node, combo, file) {
  const result = await uploadImage(file);
  const name = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
  const values = combo.options.values;
  if (!values.includes(name)) values.push(name);
  combo.value = name;
  showInputPreview(node, name);
  node.setDirtyCanvas(true, true);
  return name;
}

/**
 * Give a LoadImage-like node an upload button, file drop and a preview of `combo`'s image.
 * @param {UploadNode} node @param {any} combo the node's image combo widget
 */
export function addImageUpload(node, combo) {
  const previous = combo.callback;
  combo.callback = (value, ...rest) => { showInputPreview(node, value); return previous?.(value, ...rest); };
  /** @param {File} file */
  const upload = async (file) => {
    try {
      const name = await uploadToNode(node, combo, file);
      reportStatus(`uploaded ${name}`);
    } catch (error) {
      reportStatus(`upload of ${file.name} failed: ${error.message}`, true);
    }
  };
  const button = node.addWidget("button", "choose file to upload", undefined, () => {
    const input = el("input", {
      type: "file", accept: "image/png,image/jpeg,image/webp,image/gif,image/bmp", className: "loom-upload-input",
      hidden: true,
    });
    input.addEventListener("change", () => {
      const file = input.files?.[0];
      input.remove();
      if (file) upload(file);
    });
    document.body.append(input);
    input.click();
  });
  button.serialize = false; // not one of the node's inputs
  node.onDropFile = (file) => upload(file);
  node.refreshPreview = () => showInputPreview(node, combo.value);
  node.onAdded = node.refreshPreview;
}

/**
 * Handle files dropped on the canvas: images onto upload nodes, workflow PNG/JSON elsewhere.
 * @param {HTMLElement} element @param {import("litegraph").LGraphCanvas} canvas @param {import("litegraph").LGraph} graph
 * @param {{loadWorkflow: (data: any, source: string) => Promise<string>, setStatus: (text: string, isError?: boolean) => void}} handlers
 */
export function setupDrop(element, canvas, graph, { loadWorkflow, setStatus }) {
  element.addEventListener("dragover", (e) => { e.preventDefault(); if (e.dataTransfer) e.dataTransfer.dropEffect = "copy"; });
  element.addEventListener("drop", async (e) => {
    e.preventDefault();
    const file = e.dataTransfer?.files?.[0];
    if (!file) return;
    const [x, y] = canvas.convertEventToCanvasOffset(e);
    const node = /** @type {UploadNode | null} */ (graph.getNodeOnPos(x, y));
    if (node?.onDropFile && file.type.startsWith("image/")) { node.onDropFile(file); return; }
    try {
      setStatus(await loadDroppedFile(file, loadWorkflow));
    } catch (error) {
      setStatus(`could not load ${file.name}: ${error.message}`, true);
    }
  });
}

/**
 * Load the workflow in a dropped PNG (its editor workflow, else its API prompt) or .json file; returns a status line.
 * @param {File} file @param {(data: any, source: string) => Promise<string>} loadWorkflow
 */
export async function loadDroppedFile(file, loadWorkflow) {
  if (file.type === "image/png" || file.name.toLowerCase().endsWith(".png")) {
    const texts = pngTextChunks(await file.arrayBuffer());
    const embedded = texts.workflow || texts.prompt;
    if (!embedded) return `${file.name} carries no workflow`;
    const format = await loadWorkflow(JSON.parse(embedded), file.name);
    return `loaded the ${format === "API" ? "API-format prompt" : "workflow"} of ${file.name}`;
  }
  const format = await loadWorkflow(JSON.parse(await file.text()), file.name);
  return format === "API" ? `loaded ${file.name} (API format, laid out)` : `loaded ${file.name}`;
}
