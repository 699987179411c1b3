/**
 * Latency as a histogram of geometric buckets, so a window's p50/p95 cost a few integers in Redis
 * instead of a list of samples.
 *
 * Bucket 0 holds latencies ≤ FIRST_BOUND_MS; bucket i > 0 holds (FIRST_BOUND_MS·R^(i-1), FIRST_BOUND_MS·R^i]
 * with R = 1.25, up to LAST_BUCKET (about 38 min; anything longer lands there). A percentile is read
 * by walking the cumulative counts to the bucket that holds the wanted rank and interpolating
 * linearly inside it.
 *
 * Approximation: the estimate lies inside the bucket that holds the true value, so it is off by at
 * most one bucket's width, i.e. at most 25% of the true value (usually much less once a bucket holds
 * several samples). Good enough to tell a 4 s model from a 9 s one; not a stopwatch.
 */
export const FIRST_BOUND_MS = 100;
export const GROWTH = 1.25;
export const LAST_BUCKET = 45;

/** The histogram bucket of a latency. */
export function latencyBucket(latencyMs: number): number {
  if (!(latencyMs > FIRST_BOUND_MS)) return 0;
  // The small epsilon keeps a value exactly on a bound in the lower bucket despite floating point.
  const i = Math.ceil(Math.log(latencyMs / FIRST_BOUND_MS) / Math.log(GROWTH) - 1e-9);
  return Math.min(LAST_BUCKET, Math.max(0, i));
}

/** The (lower, upper] bounds of a bucket in ms. */
export function bucketBounds(i: number): [number, number] {
  if (i <= 0) return [0, FIRST_BOUND_MS];
  return [FIRST_BOUND_MS * GROWTH ** (i - 1), FIRST_BOUND_MS * GROWTH ** i];
}

/**
 * The q-quantile (0 < q ≤ 1) of a histogram given as counts per bucket index, or null when empty.
 * Interpolates by rank inside the bucket that holds it.
 */
export function quantile(counts: ReadonlyMap<number, number>, q: number): number | null {
  const buckets = [...counts.entries()].filter(([, n]) => n > 0).sort((a, b) => a[0] - b[0]);
  const total = buckets.reduce((s, [, n]) => s + n, 0);
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(q * total));
  let before = 0;
  for (const [i, n] of buckets) {
    if (before + n >= rank) {
      const [lo, hi] = bucketBounds(i);
      return Math.round(lo + ((hi - lo) * (rank - before)) / n);
    }
    before += n;
  }
  return Math.round(bucketBounds(buckets.at(-1)![0])[1]);
}
