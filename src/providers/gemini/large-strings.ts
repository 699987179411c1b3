/**
 * JSON.parse for generateContent answers without copying the image.
 *
 * An answer is a few hundred bytes of JSON around one or more base64 images (`"data": "..."`,
 * ~250 KB at 1K, several MB at 4K). JSON.parse copies every string value into a fresh string, so the
 * image would exist twice as text (the body, then the parsed value) before it is decoded: per answer
 * a large allocation the garbage collector has to chase, which at hundreds of answers per second is
 * most of a worker's GC work (bench:inflight). Here each long `"data"` value is cut out of the text
 * before parsing and put back afterwards as a slice of the body text (V8 keeps a slice as a view
 * into its parent, no copy); JSON.parse then reads a small document.
 *
 * Only plain values are cut out: one with a backslash (an escape, never seen in base64 but legal
 * JSON) stays in place and is parsed normally. The output is the same as JSON.parse(text).
 */
const DATA_KEY = /"data"\s*:\s*"/g;
/** Shorter values are left to JSON.parse: cutting them out saves nothing. */
const MIN_CUT_CHARS = 4096;

export function parseJsonKeepingLargeData(text: string): unknown {
  const cuts: { from: number; to: number }[] = [];
  DATA_KEY.lastIndex = 0;
  for (let m = DATA_KEY.exec(text); m !== null; m = DATA_KEY.exec(text)) {
    const from = m.index + m[0].length;
    const to = text.indexOf('"', from);
    if (to < 0) break; // not JSON: let JSON.parse say so
    DATA_KEY.lastIndex = to + 1;
    if (to - from < MIN_CUT_CHARS) continue;
    const backslash = text.indexOf('\\', from);
    if (backslash >= 0 && backslash < to) continue;
    cuts.push({ from, to });
  }
  if (cuts.length === 0) return JSON.parse(text);

  // A marker no parsed string can equal by accident: it starts with a NUL, which JSON text can only
  // spell as an escape, and carries this call's index.
  const marker = (i: number) => `\u0000pixelmill-data-${i}`;
  let small = '';
  let at = 0;
  cuts.forEach((c, i) => {
    small += text.slice(at, c.from) + `\\u0000pixelmill-data-${i}`;
    at = c.to;
  });
  small += text.slice(at);
  const values = new Map(cuts.map((c, i) => [marker(i), text.slice(c.from, c.to)]));
  return restore(JSON.parse(small), values);
}

function restore(node: unknown, values: Map<string, string>): unknown {
  if (typeof node === 'string') return values.get(node) ?? node;
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) node[i] = restore(node[i], values);
    return node;
  }
  if (node !== null && typeof node === 'object') {
    const record = node as Record<string, unknown>;
    for (const key of Object.keys(record)) record[key] = restore(record[key], values);
  }
  return node;
}
