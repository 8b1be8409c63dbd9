// @ts-check
// The side panel of the server's queue and history: running and pending prompts (cancel, interrupt)
// and finished ones with their output thumbnails (open large, delete, clear history).
import { el } from "./dom.js";
import { openLightbox } from "./lightbox.js";
import { renderGallery } from "./gallery.js";

const HISTORY_ITEMS = 50;
/** Events after which the lists may have changed. */
const REFRESH_ON = ["status", "execution_start", "execution_success", "execution_error",
  "execution_interrupted", "execution_cached"];

const shortId = (id) => String(id).slice(0, 8);

/**
 * A list entry of prompt `id`: its state, "#number id" and one button; `className` adds to "qp-item".
 * @param {string} className @param {string} id @param {string} state @param {string} number
 * @param {HTMLButtonElement} action
 */
function entryItem(className, id, state, number, action) {
  return el("li", { className: `qp-item ${className}`, dataset: { promptId: id } }, [
    el("span", { className: "qp-state", text: state }),
    el("span", { className: "qp-id", text: `#${number} ${shortId(id)}` }),
    action,
  ]);
}

/** @param {string} label @param {string} title @param {() => void} onClick */
function button(label, title, onClick) {
  return el("button", { title, text: label, on: { click: (e) => { e.stopPropagation(); onClick(); } } });
}

/** Output images of a history entry, as /view URLs in node order. */
function imagesOf(api, entry) {
  const urls = [];
  for (const output of Object.values(entry.outputs || {})) {
    for (const image of output?.images || []) urls.push(api.viewUrl(image));
  }
  return urls;
}

/** "done", "failed" or "interrupted", and the error message if any. */
function outcome(entry) {
  const status = entry.status || {};
  const messages = status.messages || [];
  const error = messages.find(([type]) => type === "execution_error")?.[1];
  if (messages.some(([type]) => type === "execution_interrupted")) return { label: "interrupted", error: "" };
  if (status.status_str === "error" || error) {
    return { label: "failed", error: error ? `${error.exception_type}: ${error.exception_message}` : "" };
  }
  return { label: "done", error: "" };
}

export class QueuePanel {
  /** @param {import("./api.js").Api} api */
  constructor(api) {
    this.api = api;
    this.open = false;
    /** Progress (0..1) of each running prompt, by prompt id: a cluster front runs several at once. */
    /** @type {Map<string, number>} */ this.progress = new Map();
    /** On a cluster front: which worker runs each running prompt ("w1 · host (pid, device)"). */
    /** @type {Map<string, string>} */ this.where = new Map();
    /** @type {boolean | undefined} */ this.cluster = undefined; // known after the first refresh
    /** @type {number | undefined} */ this.timer = undefined;
    this.queueList = el("ul", { className: "qp-list qp-queue" });
    this.historyList = el("ul", { className: "qp-list qp-history" });
    this.gallery = el("div", { className: "qp-gallery" });
    this.root = el("aside", { id: "queue-panel", hidden: true }, [
      el("div", { className: "qp-head" }, [
        el("strong", { text: "Jobs" }),
        button("Clear history", "Delete every finished entry", () => this.clearHistory()),
        button("×", "Close the panel", () => this.toggle(false)),
      ]),
      el("h3", { text: "Running and pending" }), this.queueList,
      el("h3", { text: "History" }), this.historyList,
      el("h3", { text: "Gallery" }), this.gallery,
    ]);
    document.body.append(this.root);
    this.toggleButton = button("Jobs ▸", "Show the queue and history panel", () => this.toggle());
    this.toggleButton.id = "queue-panel-button";
    const toolbar = document.getElementById("toolbar");
    toolbar?.insertBefore(this.toggleButton, document.getElementById("progress"));
    for (const type of REFRESH_ON) api.addEventListener(type, () => this.refreshSoon());
    api.on("executing", (detail) => {
      if (detail?.prompt_id && !this.progress.has(detail.prompt_id)) {
        this.progress.set(detail.prompt_id, 0);
        this.refreshSoon();
      }
    });
    api.on("progress", (detail) => {
      const { value, max, prompt_id: id } = detail || {};
      this.progress.set(String(id ?? ""), max ? value / max : 0);
      this.showProgress();
    });
  }

  /** Show or hide the panel; the canvas area shrinks to make room (app.js resizes on window resize). */
  toggle(open = !this.open) {
    this.open = open;
    this.root.hidden = !open;
    document.body.classList.toggle("queue-open", open);
    this.toggleButton.textContent = open ? "Jobs ◂" : "Jobs ▸";
    this.toggleButton.classList.toggle("active", open);
    window.dispatchEvent(new Event("resize"));
    if (open) this.refresh();
  }

  refreshSoon() {
    if (!this.open) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), 150);
  }

  async refresh() {
    try {
      const [queue, history, workers] = await Promise.all([
        this.api.json("/queue"),
        this.api.json(`/history?max_items=${HISTORY_ITEMS}&offset=-1`),
        this.cluster === false ? null : this.workers(),
      ]);
      this.cluster = Boolean(workers);
      this.where = new Map((workers || []).filter((w) => w.running)
        .map((w) => [w.running, `${w.worker_id} · ${w.node}`]));
      this.renderQueue(queue);
      this.renderHistory(history);
    } catch (error) {
      this.queueList.replaceChildren(
        el("li", { className: "qp-empty qp-error", text: `could not read the queue: ${error.message}` }));
    }
  }

  /** The workers of a cluster front (`main.py --cluster`), or null on one machine. */
  async workers() {
    try {
      const stats = await this.api.json("/system_stats");
      return stats?.loom?.workers ?? null;
    } catch (error) {
      console.warn("/system_stats", error);
      return null;
    }
  }

  /** POST and refresh; errors go to the panel rather than being lost. */
  async post(path, body) {
    try { await this.api.json(path, body); } catch (error) { console.warn(path, error); }
    this.refresh();
  }

  cancel(id) { return this.post("/queue", { delete: [id] }); }
  interrupt(id) { return this.post("/interrupt", { prompt_id: id }); }
  deleteHistory(id) { return this.post("/history", { delete: [id] }); }
  clearHistory() { return this.post("/history", { clear: true }); }

  renderQueue(queue) {
    const running = queue.queue_running || [], pending = queue.queue_pending || [];
    pending.sort((a, b) => a[0] - b[0]);
    const items = [];
    for (const id of [...this.progress.keys()]) {
      if (!running.some((entry) => entry[1] === id)) this.progress.delete(id);
    }
    for (const [number, id] of running) {
      if (!this.progress.has(id)) this.progress.set(id, 0);
      const li = entryItem("running", id, "running", number, button("Stop", "Interrupt this prompt", () => this.interrupt(id)));
      const where = this.where.get(id);
      if (where) li.append(el("div", { className: "qp-where", text: `on ${where}` }));
      li.append(el("div", { className: "qp-progress" }, [el("div", { className: "qp-progress-bar" })]));
      items.push(li);
    }
    for (const [number, id] of pending) {
      items.push(entryItem("pending", id, "pending", number,
        button("Cancel", "Remove this prompt from the queue", () => this.cancel(id))));
    }
    if (!items.length) items.push(el("li", { className: "qp-empty", text: "Nothing queued." }));
    this.queueList.replaceChildren(...items);
    this.showProgress();
  }

  showProgress() {
    for (const item of this.queueList.querySelectorAll(".running")) {
      const bar = /** @type {HTMLElement | null} */ (item.querySelector(".qp-progress-bar"));
      const fraction = this.progress.get(/** @type {HTMLElement} */ (item).dataset.promptId || "") ?? 0;
      if (bar) bar.style.width = `${Math.round(fraction * 100)}%`;
    }
  }

  renderHistory(history) {
    const items = [], gallery = [];
    for (const [id, entry] of Object.entries(history || {}).reverse()) {
      const { label, error } = outcome(entry);
      const li = entryItem(`history ${label}`, id, label, entry.prompt?.[0] ?? "?",
        button("Delete", "Delete this history entry", () => this.deleteHistory(id)));
      if (error) li.append(el("div", { className: "qp-message", text: error }));
      const urls = imagesOf(this.api, entry);
      gallery.push(...urls);
      if (urls.length) {
        li.append(el("div", { className: "qp-thumbs" }, urls.map((url) => {
          const alt = new URLSearchParams(url.split("?")[1]).get("filename") || "output image";
          return el("img", {
            className: "qp-thumb", src: url, loading: "lazy", title: "Click to view large", alt,
            on: { click: () => openLightbox(url, alt) },
          });
        })));
      }
      items.push(li);
    }
    if (!items.length) items.push(el("li", { className: "qp-empty", text: "No history yet." }));
    this.historyList.replaceChildren(...items);
    renderGallery(this.gallery, gallery);
  }
}

/** Create the panel and its toolbar button. */
export function initQueuePanel(api) {
  return new QueuePanel(api);
}
