/**
 * How many image jobs are waiting (waiting + prioritized + delayed), read by the worker for the
 * spill-over decision (src/lanes/spill.ts). Hundreds of jobs of one worker ask within a few
 * milliseconds of each other: one read is shared for `cacheMs`, so the count costs one round trip
 * per interval, not one per job. An estimate by design: it may be `cacheMs` old.
 */
import type { Queue } from 'bullmq';
import { SharedRead } from '../state/shared-read.js';

export type BacklogReader = () => Promise<number>;

export function createBacklogReader(
  queue: Pick<Queue, 'getJobCounts'>,
  opts: { cacheMs?: number; now?: () => number } = {},
): BacklogReader {
  const shared = new SharedRead<number>(opts.cacheMs ?? 250, opts.now);
  return () =>
    shared.get('', () =>
      queue.getJobCounts('waiting', 'prioritized', 'delayed').then((c) => (c['waiting'] ?? 0) + (c['prioritized'] ?? 0) + (c['delayed'] ?? 0)),
    );
}
