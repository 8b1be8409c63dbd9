// @ts-check
// The node palette: a left sidebar listing the registered node types by category (nested by "/"),
// with type-ahead search. Click an entry (or Enter in the search box) to add it at the centre of the
// view, or drag it onto the canvas.
import { LiteGraph } from "litegraph";
import { el, reportStatus } from "./dom.js";

const DRAG_TYPE = "application/x-loom-node";
const OPEN_BY_DEFAULT_WIDTH = 1280;

/** @typedef {{type: string, title: string, category: string, description: string}} Entry */
/** @typedef {{children: Map<string, CategoryTree>, entries: Entry[]}} CategoryTree */

/**
 * The node types registered by nodes.js: {type, title, category, description}, sorted by title.
 * @returns {Entry[]}
 */
export function paletteEntries() {
  /** @type {[string, typeof import("litegraph").LGraphNode & {comfyClass?: string, description?: string}][]} */
  const registered = Object.entries(LiteGraph.registered_node_types);
  return registered
    .filter(([, cls]) => cls.comfyClass)
    .map(([type, cls]) => ({ type, title: cls.title || type, category: cls.category || "", description: cls.description || "" }))
    .sort((a, b) => a.title.localeCompare(b.title));
}

/** Entries matching every word of `query` in title, class name or category; best matches first. */
export function filterEntries(entries, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  const text = (e) => `${e.title} ${e.type} ${e.category}`.toLowerCase();
  const rank = (e) => {
    const q = words.join(" "), title = e.title.toLowerCase(), type = e.type.toLowerCase();
    if (title === q || type === q) return 0;
    if (title.startsWith(q) || type.startsWith(q)) return 1;
    if (title.includes(q) || type.includes(q)) return 2;
    return 3;
  };
  return entries.filter((e) => words.every((w) => text(e).includes(w)))
    .map((e) => ({ e, r: rank(e) })).sort((a, b) => a.r - b.r || a.e.title.localeCompare(b.e.title))
    .map(({ e }) => e);
}

/** Category names alphabetically, with "_"-prefixed ones (ComfyUI's _for_testing) last. */
function byCategoryName(a, b) {
  return Number(a.startsWith("_")) - Number(b.startsWith("_")) || a.localeCompare(b);
}

/**
 * Nest entries by category path.
 * @param {Entry[]} entries @returns {CategoryTree}
 */
function categoryTree(entries) {
  /** @type {CategoryTree} */
  const root = { children: new Map(), entries: [] };
  for (const entry of entries) {
    let at = root;
    for (const part of entry.category.split("/").filter(Boolean)) {
      let child = at.children.get(part);
      if (!child) at.children.set(part, child = { children: new Map(), entries: [] });
      at = child;
    }
    at.entries.push(entry);
  }
  return root;
}

/**
 * The top-left graph position nearest to `wanted` where a node of `size` overlaps no other node and
 * lies inside the visible canvas; `wanted` itself when the view has no such room.
 * @param {import("litegraph").LGraph} graph @param {import("litegraph").LGraphCanvas} canvas
 * @param {ArrayLike<number>} size @param {[number, number]} wanted
 * @returns {[number, number]}
 */
function freeSpot(graph, canvas, size, wanted) {
  const title = LiteGraph.NODE_TITLE_HEIGHT, gap = 10, step = 20;
  const element = canvas.canvas;
  const [left, top] = canvas.ds.convertCanvasToOffset([0, 0]);
  const [right, bottom] = canvas.ds.convertCanvasToOffset([element.clientWidth, element.clientHeight]);
  const free = (x, y) => graph.nodes.every((n) => x + size[0] + gap < n.pos[0] || x > n.pos[0] + n.size[0] + gap ||
    y + size[1] + gap < n.pos[1] - title || y - title > n.pos[1] + n.size[1] + gap);
  /** @type {[number, number] | null} */
  let best = null;
  let bestDistance = Infinity;
  for (let x = left + gap; x + size[0] <= right - gap; x += step) {
    for (let y = top + title + gap; y + size[1] <= bottom - gap; y += step) {
      const distance = (x - wanted[0]) ** 2 + (y - wanted[1]) ** 2;
      if (distance < bestDistance && free(x, y)) { best = [x, y]; bestDistance = distance; }
    }
  }
  return best ?? wanted;
}

/**
 * Build the sidebar and its toolbar toggle.
 * @param {{graph: import("litegraph").LGraph, canvas: import("litegraph").LGraphCanvas, fitView: () => void}} editor
 */
export function initPalette({ graph, canvas, fitView }) {
  const entries = paletteEntries();
  const search = el("input", {
    type: "search", id: "palette-search", placeholder: "Search nodes…",
    title: "Filter by name, class or category; Enter adds the first match",
  });
  const list = el("div", { className: "palette-list" });
  const panel = el("aside", { id: "node-palette", "aria-label": "Node palette" }, [search, list]);
  document.body.append(panel);
  /** @type {Set<string>} open category paths, kept across re-renders */
  const openPaths = new Set();

  /**
   * Add a node of `type` with its top-left at graph position `pos`, or centred in the view.
   * @param {string} type @param {ArrayLike<number> | null} [pos]
   */
  function addNode(type, pos = null) {
    const node = LiteGraph.createNode(type);
    if (!node) return null;
    if (pos) {
      node.pos = [pos[0], pos[1]];
    } else {
      const element = canvas.canvas;
      const [cx, cy] = canvas.ds.convertCanvasToOffset([element.clientWidth / 2, element.clientHeight / 2]);
      node.pos = freeSpot(graph, canvas, node.size, [cx - node.size[0] / 2, cy - node.size[1] / 2]);
    }
    graph.add(node);
    canvas.selectNode?.(node);
    canvas.setDirty(true, true);
    reportStatus(`added ${node.title}`);
    return node;
  }

  /** @param {Entry} entry @param {boolean} showCategory */
  function item(entry, showCategory) {
    const button = el("button", {
      className: "palette-item", dataset: { type: entry.type }, draggable: true,
      title: [entry.type, entry.description].filter(Boolean).join(": "),
    }, [
      el("span", { className: "palette-name", text: entry.title }),
      showCategory && entry.category && el("span", { className: "palette-category", text: entry.category }),
    ]);
    button.addEventListener("click", () => addNode(entry.type));
    button.addEventListener("dragstart", (e) => {
      e.dataTransfer?.setData(DRAG_TYPE, entry.type);
      if (e.dataTransfer) e.dataTransfer.effectAllowed = "copy";
    });
    return button;
  }

  /** @param {CategoryTree} tree @param {string} path @param {HTMLElement} into */
  function renderTree(tree, path, into) {
    for (const [name, child] of [...tree.children].sort(([a], [b]) => byCategoryName(a, b))) {
      const full = path ? `${path}/${name}` : name;
      const details = el("details", {
        className: "palette-category-group", dataset: { path: full }, open: openPaths.has(full),
      }, [el("summary", { text: name })]);
      details.addEventListener("toggle", () => { if (details.open) openPaths.add(full); else openPaths.delete(full); });
      renderTree(child, full, details);
      into.append(details);
    }
    for (const entry of tree.entries) into.append(item(entry, false));
  }

  function render() {
    list.replaceChildren();
    const query = search.value.trim();
    if (!query) { renderTree(categoryTree(entries), "", list); return; }
    const found = filterEntries(entries, query);
    if (!found.length) list.append(el("div", { className: "palette-empty", text: "No matching nodes" }));
    for (const entry of found) list.append(item(entry, true));
  }

  search.addEventListener("input", render);
  search.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      const first = list.querySelector(".palette-item");
      if (first instanceof HTMLElement && search.value.trim()) addNode(first.dataset.type || "");
    } else if (e.key === "Escape") {
      search.value = "";
      render();
    } else if (e.key === "ArrowDown") {
      e.preventDefault();
      /** @type {HTMLElement | null} */ (list.querySelector(".palette-item"))?.focus();
    }
  });

  const element = canvas.canvas;
  element.addEventListener("dragover", (e) => {
    if (e.dataTransfer?.types.includes(DRAG_TYPE)) { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; }
  });
  element.addEventListener("drop", (e) => {
    const type = e.dataTransfer?.getData(DRAG_TYPE);
    if (!type) return;
    e.preventDefault();
    addNode(type, canvas.convertEventToCanvasOffset(e));
  });

  const toggle = el("button", { id: "palette-button", title: "Show or hide the node palette", text: "Nodes" });
  /** @param {boolean} open */
  const setOpen = (open) => {
    panel.hidden = !open;
    document.body.classList.toggle("palette-open", open);
    toggle.classList.toggle("active", open);
    window.dispatchEvent(new Event("resize"));
  };
  toggle.addEventListener("click", () => {
    setOpen(Boolean(panel.hidden));
    fitView();
    if (!panel.hidden) search.focus();
  });
  document.querySelector("#toolbar strong")?.after(toggle);

  render();
  setOpen(window.innerWidth >= OPEN_BY_DEFAULT_WIDTH);
  return { addNode, setOpen, render };
}
