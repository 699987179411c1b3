/**
 * How many image jobs are waiting (waiting + prioritized + delayed), read by the worker for the
 * spill-over decision (src/lanes/spill.ts). Hundreds of jobs of one worker ask within a few
 * milliseconds of each other: one read is shared for `cacheMs`, so the count costs one round trip
 * per interval, not one per job. An estimate by design: it may be `cacheMs` old.
 */
import type { Queue } from 'bullmq';

export type BacklogReader = () => Promise<number>;

export function createBacklogReader(
  queue: Pick<Queue, 'getJobCounts'>,
  opts: { cacheMs?: number; now?: () => number } = {},
): BacklogReader {
  const cacheMs = opts.cacheMs ?? 250;
  const now = opts.now ?? Date.now;
  let cached: { at: number; value: Promise<number> } | undefined;
  return () => {
    const t = now();
    if (cached && t >= cached.at && t - cached.at < cacheMs) return cached.value;
    const value = queue.getJobCounts('waiting', 'prioritized', 'delayed').then((c) => (c['waiting'] ?? 0) + (c['prioritized'] ?? 0) + (c['delayed'] ?? 0));
    const entry = { at: t, value };
    cached = entry;
    // A failed read is not kept: the next caller tries again.
    value.catch(() => {
      if (cached === entry) cached = undefined;
    });
    return value;
  };
}
