/**
 * Real, decodable images of an exact pixel size for the simulator's answers. Encoding a 4K JPEG
 * takes about a second, so each (MIME type, width, height) is rendered once per process and the
 * encoded bytes and their base64 text are kept; requests only copy the cached base64 out.
 *
 * The picture is a gradient with stripes and deterministic noise: noise keeps the encoded size in
 * the range of real model output (a 1K JPEG of a few hundred KB, a 4K one of a few MB), so the
 * client's buffering, size limits and upload paths are exercised with realistic payloads.
 */
import sharp from 'sharp';

export type SimImageMime = 'image/jpeg' | 'image/png';

export interface EncodedImage {
  readonly mimeType: SimImageMime;
  readonly width: number;
  readonly height: number;
  readonly bytes: Buffer;
  readonly base64: string;
  /** `base64` as ASCII bytes, ready to write to a socket without another conversion. */
  readonly base64Bytes: Buffer;
}

/** Enough for every size of one aspect-ratio mix; the largest entries are a few tens of MB of memory. */
const MAX_ENTRIES = 48;
const cache = new Map<string, Promise<EncodedImage>>();

export function encodedImage(mimeType: SimImageMime, width: number, height: number): Promise<EncodedImage> {
  const key = `${mimeType}:${width}x${height}`;
  const hit = cache.get(key);
  if (hit) {
    // Map order doubles as recency order for eviction.
    cache.delete(key);
    cache.set(key, hit);
    return hit;
  }
  const made = encode(mimeType, width, height);
  cache.set(key, made);
  // A failed encode must not stay cached.
  made.catch(() => cache.delete(key));
  while (cache.size > MAX_ENTRIES) {
    const oldest = cache.keys().next().value as string;
    cache.delete(oldest);
  }
  return made;
}

/** For tests: whether an image is already rendered. */
export function isImageCached(mimeType: SimImageMime, width: number, height: number): boolean {
  return cache.has(`${mimeType}:${width}x${height}`);
}

async function encode(mimeType: SimImageMime, width: number, height: number): Promise<EncodedImage> {
  const png = mimeType === 'image/png';
  // PNG compresses noise badly; sparser noise keeps a 1K PNG near the ~1 MB real models send.
  const raw = renderRaw(width, height, png ? { amplitude: 16, density: 32 } : { amplitude: 24, density: 256 });
  const pipeline = sharp(raw, { raw: { width, height, channels: 3 } });
  const bytes = png
    ? await pipeline.png({ compressionLevel: 6 }).toBuffer()
    : await pipeline.jpeg({ quality: 88 }).toBuffer();
  const base64 = bytes.toString('base64');
  return { mimeType, width, height, bytes, base64, base64Bytes: Buffer.from(base64, 'latin1') };
}

/**
 * RGB pixels: diagonal gradient, horizontal stripes, and xorshift noise on `density`/256 of the pixels.
 * Channel sums stay below 256 so nothing wraps.
 */
function renderRaw(width: number, height: number, noise: { amplitude: number; density: number }): Buffer {
  const buf = Buffer.allocUnsafe(width * height * 3);
  let s = (0x9e3779b9 ^ Math.imul(width, 73_856_093) ^ Math.imul(height, 19_349_663)) >>> 0 || 1;
  const fx = 200 / width;
  const fy = 170 / height;
  const fd = 200 / (width + height);
  const stripe = Math.max(8, Math.round(height / 32));
  const { amplitude, density } = noise;
  let i = 0;
  for (let y = 0; y < height; y++) {
    const gy = 40 + y * fy + (Math.floor(y / stripe) % 2) * 20;
    for (let x = 0; x < width; x++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      const n = s >>> 0;
      const on = n >>> 24 < density;
      buf[i++] = 30 + x * fx + (on ? (n & 0xff) % amplitude : 0);
      buf[i++] = gy + (on ? ((n >>> 8) & 0xff) % amplitude : 0);
      buf[i++] = 20 + (x + y) * fd + (on ? ((n >>> 16) & 0xff) % amplitude : 0);
    }
  }
  return buf;
}
