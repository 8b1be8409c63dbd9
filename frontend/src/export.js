// @ts-check
// Editor workflow -> API-format prompt, in the browser, the way engine/workflow.py's ui_to_api does:
// widget values by /object_info order (a control_after_generate input takes two slots), virtual
// nodes dropped, muted nodes dropped, links followed through reroutes and bypassed nodes.

const VIRTUAL = new Set(["Note", "MarkdownNote", "Reroute", "PrimitiveNode"]);
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
const MODE_NEVER = 2, MODE_BYPASS = 4;

/** The widget inputs of a node class in widgets_values order: [name, takes-two-slots]. */
function widgetInputs(def) {
  const out = [];
  for (const group of ["required", "optional"]) {
    const inputs = def.input?.[group] || {};
    for (const name of def.input_order?.[group] || Object.keys(inputs)) {
      const [type, options = {}] = inputs[name] || [];
      if ((Array.isArray(type) || WIDGET_TYPES.has(type)) && !options.forceInput) {
        out.push([name, !!options.control_after_generate]);
      }
    }
  }
  return out;
}

const wrapList = (value) => (Array.isArray(value) ? { __value__: value } : value);

/** Convert a serialized editor workflow into an API prompt with the classes of `objectInfo`. */
export function workflowToApi(workflow, objectInfo) {
  const nodes = new Map(workflow.nodes.map((n) => [String(n.id), n]));
  const links = new Map();
  for (const link of workflow.links || []) {
    if (Array.isArray(link)) links.set(link[0], [String(link[1]), link[2]]);
    else links.set(link.id, [String(link.origin_id), link.origin_slot]);
  }
  const resolve = (linkId) => {
    const seen = new Set();
    while (!seen.has(linkId)) {
      seen.add(linkId);
      const origin = links.get(linkId);
      const source = origin && nodes.get(origin[0]);
      if (!source) return undefined;
      if (source.type === "PrimitiveNode") return wrapList((source.widgets_values || [null])[0]);
      if (source.type === "Reroute" || source.mode === MODE_BYPASS) {
        linkId = passthrough(source, origin[1]);
        if (linkId === undefined) return undefined;
        continue;
      }
      return source.mode === MODE_NEVER ? undefined : origin;
    }
    throw new Error("links form a loop through reroute or bypassed nodes");
  };
  /** @type {Record<string, {class_type: string, inputs: Record<string, any>, _meta: {title: string}}>} */
  const prompt = {};
  for (const [id, node] of nodes) {
    if (VIRTUAL.has(node.type) || node.mode === MODE_NEVER || node.mode === MODE_BYPASS) continue;
    const def = objectInfo[node.type];
    if (!def) throw new Error(`node ${id} has unknown type ${node.type}`);
    const inputs = {};
    const values = node.widgets_values;
    let position = 0;
    for (const [name, two] of widgetInputs(def)) {
      if (Array.isArray(values)) {
        if (position < values.length) inputs[name] = wrapList(values[position]);
      } else if (values && name in values) inputs[name] = wrapList(values[name]);
      position += two ? 2 : 1;
    }
    for (const slot of node.inputs || []) {
      if (slot.link == null) continue;
      const value = resolve(slot.link);
      if (value !== undefined) inputs[slot.name] = value;
    }
    prompt[id] = { class_type: node.type, inputs, _meta: { title: node.title || def.display_name || node.type } };
  }
  return prompt;
}

function passthrough(node, outSlot) {
  const slots = node.inputs || [];
  const outType = node.outputs?.[outSlot]?.type;
  let candidates = slots.filter((s) => s.link != null);
  if (node.type !== "Reroute" && outType !== undefined) {
    const typed = candidates.filter((s) => s.type === outType);
    if (typed.includes(slots[outSlot])) return slots[outSlot].link;
    candidates = typed;
  }
  return candidates[0]?.link;
}

/** Offer the graph's API-format prompt as a .json download. */
export async function downloadApiPrompt(graph, api, name = "workflow_api.json") {
  const prompt = workflowToApi(graph.serialize(), await api.objectInfo());
  const blob = new Blob([JSON.stringify(prompt, null, 2)], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  return prompt;
}
