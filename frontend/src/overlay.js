// @ts-check
// What the server tells about nodes, drawn on them: running highlight, progress, images, errors.

export const state = {
  /**
   * The prompts running now, by prompt id: the node each runs and that node's progress (0..1). One server
   * runs one prompt at a time; a cluster front (`--cluster`) runs several, so several nodes can light up.
   * @type {Map<string, {node: string | null, progress: number}>}
   */
  runs: new Map(),
  /** @type {string | null} */ running: null, // the node that started running last
  progress: 0, // the progress reported last
  /** @type {Map<string, HTMLImageElement[]>} */ images: new Map(),
  /** @type {Map<string, string>} */ errors: new Map(),
};

function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    const next = line ? `${line} ${word}` : word;
    if (ctx.measureText(next).width > width && line) { lines.push(line); line = word; } else line = next;
  }
  if (line) lines.push(line);
  return lines.slice(0, 4);
}

/** The progress of the prompts running on this node (the furthest one), or undefined when none runs it. */
export function runningProgress(id) {
  let progress;
  for (const run of state.runs.values()) {
    if (run.node === id) progress = Math.max(progress ?? 0, run.progress);
  }
  return progress;
}

export function drawOverlay(node, ctx) {
  const id = String(node.id);
  const [width, height] = node.size;
  const images = state.images.get(id);
  if (images?.length) {
    const top = node.computeSize()[1];
    const room = height - top - 4;
    const img = images[images.length - 1];
    if (room > 16 && img.complete && img.naturalWidth) {
      const scale = Math.min(width / img.naturalWidth, room / img.naturalHeight);
      const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
      ctx.drawImage(img, (width - w) / 2, top + (room - h) / 2, w, h);
    }
  }
  const error = state.errors.get(id);
  const progress = runningProgress(id);
  if (progress !== undefined || error) {
    const title = 30;
    ctx.save();
    ctx.lineWidth = 3;
    ctx.strokeStyle = error ? "#ff4040" : "#4caf50";
    ctx.strokeRect(-3, -title - 3, width + 6, height + title + 6);
    ctx.restore();
  }
  if (progress) {
    ctx.fillStyle = "#4caf50";
    ctx.fillRect(0, height - 5, width * progress, 5);
  }
  if (error) {
    ctx.save();
    ctx.font = "12px sans-serif";
    ctx.fillStyle = "#ff7b7b";
    wrap(ctx, error, width).forEach((line, i) => ctx.fillText(line, 0, height + 16 + i * 14));
    ctx.restore();
  }
}
