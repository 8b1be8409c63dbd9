// @ts-check
// The Jobs panel's gallery: every output image of the history as one grid, newest first.
import { el } from "./dom.js";
import { openLightbox } from "./lightbox.js";

/** File name of a /view URL, for alt text and titles. */
function fileName(url) {
  return new URLSearchParams(url.split("?")[1]).get("filename") || "output image";
}

/**
 * Fill `grid` with one clickable thumbnail per URL (opens the lightbox), or a note when there is none.
 * @param {HTMLElement} grid @param {string[]} urls
 */
export function renderGallery(grid, urls) {
  if (!urls.length) {
    grid.replaceChildren(el("div", { className: "qp-empty", text: "No images yet." }));
    return;
  }
  grid.replaceChildren(...urls.map((url) => {
    const alt = fileName(url);
    return el("img", {
      className: "qp-gallery-item", src: url, loading: "lazy", alt, title: `${alt} (click to view large)`,
      on: { click: () => openLightbox(url, alt) },
    });
  }));
}
