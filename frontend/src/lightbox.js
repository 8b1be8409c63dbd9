// @ts-check
// A full-window view of one image: click anywhere or press Esc to close it.
import { registerCommand } from "./commands.js";
import { el } from "./dom.js";

/** @type {HTMLElement | null} */
let box = null;

export function closeLightbox() {
  box?.remove();
  box = null;
}

/** Show `url` large, with `caption` under it. */
export function openLightbox(url, caption = "") {
  closeLightbox();
  box = el("div", { id: "lightbox", title: "Click or press Esc to close", on: { click: closeLightbox } }, [
    el("img", { src: url, alt: caption }),
    el("div", { className: "lightbox-caption", text: caption }),
  ]);
  document.body.append(box);
}

/** Esc closes the image view. */
export function initLightbox() {
  registerCommand({
    id: "lightbox.close", label: "Close the image view", section: "Help", keys: ["Escape"], whileTyping: true,
    when: () => box !== null, run: closeLightbox,
  });
}
