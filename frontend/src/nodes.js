// @ts-check
// Register one litegraph node type per node class of /object_info: typed sockets and widgets.
import { LiteGraph, LGraphCanvas, LGraphNode } from "litegraph";
import { drawOverlay } from "./overlay.js";
import { PREVIEW_HEIGHT, addImageUpload } from "./files.js";
import { useTextEditor } from "./text-editor.js";

/** Socket colours per type (the usual ComfyUI dark palette). */
export const TYPE_COLORS = {
  MODEL: "#B39DDB", CLIP: "#FFD500", VAE: "#FF6E6E", CONDITIONING: "#FFA931", LATENT: "#FF9CF9",
  IMAGE: "#64B5F6", MASK: "#81C784", CONTROL_NET: "#6EE7B7", CLIP_VISION: "#A8DADC",
  CLIP_VISION_OUTPUT: "#ad7452", STYLE_MODEL: "#C2FFAE", NOISE: "#B0B0B0", GUIDER: "#66FFFF",
  SAMPLER: "#ECB4B4", SIGMAS: "#CDFFCD", INT: "#9ec5a0", FLOAT: "#9ec5a0", STRING: "#9ec5a0",
};
export const SEED_CONTROLS = ["fixed", "increment", "decrement", "randomize"];
const VALUE_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

function decimals(step) {
  const text = String(step);
  return text.includes(".") ? text.split(".")[1].length : 0;
}

/** Add the widget(s) of one value input; returns false when the input is a socket. */
function addValueWidget(node, name, spec) {
  const [type, options = {}] = spec;
  const changed = () => node.setDirtyCanvas(true, true);
  if (Array.isArray(type) || type === "COMBO") {
    const values = Array.isArray(type) ? type : options.options || [];
    const widget = node.addWidget("combo", name, options.default ?? values[0] ?? "", changed, { values });
    if (options.image_upload) addImageUpload(node, widget);
    return true;
  }
  if (!VALUE_TYPES.has(type) || options.forceInput) return false;
  if (type === "INT" || type === "FLOAT") {
    const step = options.step ?? (type === "INT" ? 1 : 0.01);
    const precision = type === "INT" ? 0 : decimals(options.round ?? step);
    node.addWidget("number", name, options.default ?? 0, changed,
      { min: options.min ?? -Infinity, max: options.max ?? Infinity, step2: step, precision, round: type === "INT" ? 1 : options.round });
    if (type === "INT" && (options.control_after_generate || name === "seed" || name === "noise_seed")) {
      node.addWidget("combo", "control_after_generate", "randomize", changed, { values: SEED_CONTROLS, serialize: false });
    }
  } else if (type === "STRING") {
    const widget = node.addWidget("text", name, options.default ?? "", changed, { multiline: !!options.multiline });
    widget.multiline = !!options.multiline;
    if (options.multiline) useTextEditor(widget);
  } else if (type === "BOOLEAN") {
    node.addWidget("toggle", name, options.default ?? false, changed, { on: "true", off: "false" });
  }
  return true;
}

/** Whether the node shows an image under its widgets (outputs, or the input image of LoadImage). */
function hasImage(def) {
  const inputs = { ...def.input?.required, ...def.input?.optional };
  return !!def.output_node || Object.values(inputs).some((spec) => spec?.[1]?.image_upload);
}

/** The litegraph node class of node class `name`, declared by its /object_info entry `def`. */
function nodeClass(name, def) {
  const imageRoom = hasImage(def) ? PREVIEW_HEIGHT : 0;
  class LoomNode extends LGraphNode {
    /** The node class this node runs on the server (ComfyUI's name for the field). */
    static comfyClass = name;
    static description = def.description || "";
    /** @type {(() => void) | undefined} set by files.js, while the widgets are added, on nodes that preview an input image */
    refreshPreview;

    constructor(title) {
      super(title ?? def.display_name ?? name);
      this.comfyClass = name;
      const order = def.input_order || {};
      for (const group of ["required", "optional"]) {
        const inputs = def.input?.[group] || {};
        for (const input of order[group] || Object.keys(inputs)) {
          const spec = inputs[input];
          if (!spec || addValueWidget(this, input, spec)) continue;
          this.addInput(input, spec[0], { color_on: TYPE_COLORS[spec[0]] });
        }
      }
      (def.output || []).forEach((type, i) => {
        this.addOutput(def.output_name?.[i] || type, type, { color_on: TYPE_COLORS[type] });
      });
      this.serialize_widgets = true;
      const size = this.computeSize();
      this.size = /** @type {[number, number]} */ ([Math.max(size[0], 240), size[1] + imageRoom]);
    }

    /** A loaded workflow's size may be too small for the widgets (and the image of output nodes). */
    onConfigure() {
      const needed = this.computeSize();
      this.size = /** @type {[number, number]} */ (
        [Math.max(this.size[0], needed[0]), Math.max(this.size[1], needed[1] + imageRoom)]);
      this.refreshPreview?.();
    }

    onDrawForeground(ctx) { drawOverlay(this, ctx); }
  }
  LoomNode.title = def.display_name || name;
  LoomNode.category = def.category || "";
  return LoomNode;
}

/** Register every node class of `objectInfo` (replacing earlier registrations) and the socket colours. */
export function registerNodes(objectInfo) {
  for (const [type, color] of Object.entries(TYPE_COLORS)) {
    LGraphCanvas.link_type_colors[type] = color;
  }
  for (const [name, def] of Object.entries(objectInfo)) {
    const cls = nodeClass(name, def);
    LiteGraph.registerNodeType(name, cls);
    cls.category = def.category || ""; // registerNodeType derives it from the type name; keep the server's
  }
}

/**
 * Refresh combo values (model lists) of the nodes in `graph` from a new /object_info.
 * @param {import("litegraph").LGraph} graph
 */
export function refreshCombos(graph, objectInfo) {
  for (const node of graph.nodes) {
    const def = objectInfo[node.type];
    if (!def) continue;
    for (const widget of node.widgets || []) {
      const spec = def.input?.required?.[widget.name] || def.input?.optional?.[widget.name];
      if (spec && Array.isArray(spec[0])) widget.options.values = spec[0];
    }
  }
}

/**
 * After queueing: apply each seed's control_after_generate (the queued value is the one shown).
 * @param {import("litegraph").LGraph} graph
 */
export function applySeedControls(graph) {
  for (const node of graph.nodes) {
    const widgets = node.widgets || [];
    widgets.forEach((widget, i) => {
      const control = widgets[i + 1];
      if (control?.name !== "control_after_generate") return;
      const seed = Number(widget.value);
      const min = widget.options.min ?? 0;
      const max = Math.min(widget.options.max ?? Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      if (control.value === "increment") widget.value = Math.min(seed + 1, max);
      else if (control.value === "decrement") widget.value = Math.max(seed - 1, min);
      else if (control.value === "randomize") widget.value = min + Math.floor(Math.random() * Math.min(max - min, 2 ** 32));
    });
  }
}
