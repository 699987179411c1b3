/**
 * Seeded randomness for the simulator. Every random choice of a request comes from a generator
 * derived from (simulator seed, what the request asked for, how often it was asked, purpose), so
 * the same seed gives the same latencies, ids and faults even when requests arrive in another
 * order, and turning a fault rate on does not shift the latencies.
 */
import { createHash } from 'node:crypto';

export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform in [min, max). */
  between(min: number, max: number): number;
  /** Uniform integer in [min, max]. */
  int(min: number, max: number): number;
  chance(p: number): boolean;
  bytes(n: number): Buffer;
}

/** A small, fast generator (sfc32) seeded from a SHA-256 of the parts. */
export function rngFrom(...parts: readonly (string | number)[]): Rng {
  const h = createHash('sha256').update(parts.join('\u0000')).digest();
  let a = h.readUInt32LE(0);
  let b = h.readUInt32LE(4);
  let c = h.readUInt32LE(8);
  let d = h.readUInt32LE(12);
  const nextU32 = (): number => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  // Discard the first outputs: sfc32 mixes poorly right after seeding.
  for (let i = 0; i < 12; i++) nextU32();
  const next = (): number => nextU32() / 4_294_967_296;
  return {
    next,
    between: (min, max) => min + (max - min) * next(),
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    chance: (p) => next() < p,
    bytes: (n) => {
      const out = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i += 4) {
        const v = nextU32();
        for (let k = 0; k < 4 && i + k < n; k++) out[i + k] = (v >>> (8 * k)) & 0xff;
      }
      return out;
    },
  };
}

/** Stable short fingerprint of a prompt, as shown in the request log. */
export function promptHash(prompt: string): string {
  return createHash('sha256').update(prompt).digest('hex').slice(0, 16);
}
