// @ts-check
// What the server tells about nodes (node-state.js), drawn on them: running highlight, progress, images, errors.
import { nodeState, runningProgress } from "./node-state.js";

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

/**
 * Draw on `node` (in its own coordinates) what the server said about it.
 * @param {import("litegraph").LGraphNode} node @param {CanvasRenderingContext2D} ctx
 */
export function drawOverlay(node, ctx) {
  const id = String(node.id);
  const [width, height] = node.size;
  const { images: allImages, errors } = nodeState.get();
  const images = allImages.get(id);
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
  const error = errors.get(id);
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
