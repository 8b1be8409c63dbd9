// @ts-check
// The Jobs panel's gallery: every output image of the history as one grid, newest first.
import { openLightbox } from "./lightbox.js";

/** File name of a /view URL, for alt text and titles. */
function fileName(url) {
  return new URLSearchParams(url.split("?")[1]).get("filename") || "output image";
}

/** Fill `grid` with one clickable thumbnail per URL (opens the lightbox), or a note when there is none. */
export function renderGallery(grid, urls) {
  if (!urls.length) {
    const empty = document.createElement("div");
    empty.className = "qp-empty";
    empty.textContent = "No images yet.";
    grid.replaceChildren(empty);
    return;
  }
  grid.replaceChildren(...urls.map((url) => {
    const img = document.createElement("img");
    img.className = "qp-gallery-item";
    img.src = url;
    img.loading = "lazy";
    img.alt = fileName(url);
    img.title = `${img.alt} (click to view large)`;
    img.addEventListener("click", () => openLightbox(url, img.alt));
    return img;
  }));
}
