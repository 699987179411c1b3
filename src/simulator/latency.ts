/**
 * How long a generation takes, in simulated seconds, from the seeds' measured "Actual" table
 * (/work/shared/seeds: NB2 512 3-5 s, 1K 5-10 s, 2K 10-25 s, 4K 20-60 s; Pro 1K 10-20 s,
 * 2K 20-35 s, 4K 30-60 s; NB2 about twice as slow at peak; high thinking adds a few seconds).
 */
import type { ImageSize, ModelFamily } from '../models/catalogue.js';
import type { Rng } from './prng.js';

export const LATENCY_SECONDS: Record<ModelFamily, Record<ImageSize, readonly [number, number]>> = {
  fast: { '512': [3, 5], '1K': [5, 10], '2K': [10, 25], '4K': [20, 60] },
  // Pro has no 512 tier; the seeds still measured 8-12 s for its smallest output.
  pro: { '512': [8, 12], '1K': [10, 20], '2K': [20, 35], '4K': [30, 60] },
};

/**
 * A draw from a triangular distribution over the measured range with its mode at a third of the
 * range: most calls are near the fast end, a minority take close to the maximum.
 */
export function generationSeconds(rng: Rng, family: ModelFamily, size: ImageSize): number {
  const [min, max] = LATENCY_SECONDS[family][size];
  const mode = min + (max - min) / 3;
  const u = rng.next();
  const c = (mode - min) / (max - min);
  return u < c ? min + Math.sqrt(u * (max - min) * (mode - min)) : max - Math.sqrt((1 - u) * (max - min) * (max - mode));
}

/** Extra seconds for `thinkingLevel: HIGH`. */
export function highThinkingSeconds(rng: Rng): number {
  return rng.between(1, 4);
}
