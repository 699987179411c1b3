/**
 * How long a generation takes, in simulated seconds: a draw within the seeds' measured ranges
 * (LATENCY_SECONDS in the model catalogue); NB2 about twice as slow at peak (the caller applies it);
 * high thinking adds a few seconds.
 */
import { LATENCY_SECONDS, type ImageSize, type ModelFamily } from '../models/catalogue.js';
import type { Rng } from './prng.js';

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
