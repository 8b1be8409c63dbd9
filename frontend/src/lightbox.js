// @ts-check
// A full-window view of one image: click anywhere or press Esc to close it.

/** @type {HTMLElement | null} */
let box = null;

export function closeLightbox() {
  box?.remove();
  box = null;
}

/** Show `url` large, with `caption` under it. */
export function openLightbox(url, caption = "") {
  closeLightbox();
  box = document.createElement("div");
  box.id = "lightbox";
  box.title = "Click or press Esc to close";
  const img = document.createElement("img");
  img.src = url;
  img.alt = caption;
  const text = document.createElement("div");
  text.className = "lightbox-caption";
  text.textContent = caption;
  box.append(img, text);
  box.addEventListener("click", closeLightbox);
  document.body.append(box);
}

window.addEventListener("keydown", (e) => {
  if (box && e.key === "Escape") { e.preventDefault(); e.stopPropagation(); closeLightbox(); }
}, true);
