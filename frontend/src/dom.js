// @ts-check
// Small DOM helpers shared by the editor's modules: build elements, find them, tell whether the user is
// typing, offer a download, and report a status line to the toolbar.

/**
 * What `el` sets on a new element. `className`, `text` (textContent), `dataset`, `style` and `on` (event
 * listeners) are special; `role` and `aria-*` become attributes; any other name is set as a property
 * (id, title, type, hidden, src, alt, ...).
 * @typedef {{
 *   className?: string, text?: string, dataset?: Record<string, string>, style?: Partial<CSSStyleDeclaration>,
 *   on?: Record<string, EventListener>, [name: string]: unknown,
 * }} Attributes
 */

/** @typedef {Node | string | null | undefined | false} Child */

/**
 * A new element: `el("button", {className: "qp-item", title: "Stop"}, ["Stop"])`.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attributes} [attributes]
 * @param {Child[]} [children] nodes or text; null, undefined and false are skipped
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attributes = {}, children = []) {
  const element = document.createElement(tag);
  const { className, text, dataset, style, on, ...rest } = attributes;
  if (className) element.className = className;
  if (text) element.textContent = text;
  if (dataset) Object.assign(element.dataset, dataset);
  if (style) Object.assign(element.style, style);
  for (const [type, listener] of Object.entries(on || {})) element.addEventListener(type, listener);
  for (const [name, value] of Object.entries(rest)) {
    if (name === "role" || name.startsWith("aria-")) element.setAttribute(name, String(value));
    else /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (element))[name] = value;
  }
  element.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

/**
 * The element with `id`, checked to be a `type` (HTMLElement unless told); throws naming the id otherwise.
 * @template {HTMLElement} [T=HTMLElement]
 * @param {string} id
 * @param {new (...args: any[]) => T} [type]
 * @returns {T}
 */
export function byId(id, type) {
  const element = document.getElementById(id);
  const wanted = type ?? HTMLElement;
  if (!(element instanceof wanted)) throw new Error(`the page has no ${wanted.name} #${id}`);
  return /** @type {T} */ (element);
}

/** Whether `target` takes typed text (an input, textarea, select or editable element): shortcuts keep out of it. */
export function isTyping(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

/** Offer `value` as a downloaded .json file named `name`. */
export function downloadJson(value, name) {
  const blob = new Blob([JSON.stringify(value, null, 2)], { type: "application/json" });
  const link = el("a", { href: URL.createObjectURL(blob), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

/** Show `text` in the toolbar's status line (app.js listens for "loom-status"). */
export function reportStatus(text, isError = false) {
  window.dispatchEvent(new CustomEvent("loom-status", { detail: { text, isError } }));
}
