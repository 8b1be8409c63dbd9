// @ts-check
// Text chunks of a PNG file (tEXt, and uncompressed iTXt), read in the browser with a DataView.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

/** Every text chunk of the PNG in `buffer` as {keyword: text}; throws when it is not a PNG. */
export function pngTextChunks(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1"), utf8 = new TextDecoder("utf-8");
  /** @type {Record<string, string>} */
  const texts = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === "tEXt") {
      const zero = data.indexOf(0);
      if (zero > 0) texts[latin1.decode(data.subarray(0, zero))] = latin1.decode(data.subarray(zero + 1));
    } else if (type === "iTXt") {
      readItxt(data, texts, latin1, utf8);
    } else if (type === "IEND") break;
    offset += 12 + length;
  }
  return texts;
}

/** iTXt: keyword 0 compressed-flag method language 0 translated-keyword 0 text (UTF-8); compressed ones are skipped. */
function readItxt(data, texts, latin1, utf8) {
  const zero = data.indexOf(0);
  if (zero <= 0 || data[zero + 1] !== 0) return;
  const language = data.indexOf(0, zero + 3);
  const translated = language < 0 ? -1 : data.indexOf(0, language + 1);
  if (translated < 0) return;
  texts[latin1.decode(data.subarray(0, zero))] = utf8.decode(data.subarray(translated + 1));
}
