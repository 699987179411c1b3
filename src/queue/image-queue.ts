/**
 * The image queue: its name, its key layout and the options every image job is added with.
 *
 * Keys live under `{QUEUE_PREFIX}:images:*` (BullMQ's own layout). pixelmill's own keys live under
 * `{QUEUE_PREFIX}:pm:*` (see keys()).
 */
import { createHash } from 'node:crypto';
import { Queue, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';

export const IMAGE_QUEUE = 'images';
/** BullMQ job name of an image job. */
export const IMAGE_JOB_NAME = 'generate';
/** The custom backoff type the worker implements (full jitter, see worker/backoff.ts). */
export const BACKOFF_TYPE = 'pixelmill-full-jitter';

/** pixelmill's own Redis keys (everything BullMQ does not already keep). */
export function keys(config: Config) {
  const p = `${config.QUEUE_PREFIX}:pm`;
  return {
    /** idempotency marker: `{jobId}|{requestHash}`, kept for JOB_RETENTION */
    idempotency: (tenant: string | null, key: string) => `${p}:idem:${sha256(`${tenant ?? ''}\n${key}`).slice(0, 40)}`,
    /** a model's shared cooldown after a 429: value = epoch ms until which nobody calls it */
    cooldown: (modelId: string) => `${p}:model:${modelId}:cooldown`,
    /** a model id answered with 404 NOT_FOUND */
    retired: (modelId: string) => `${p}:model:${modelId}:retired`,
  };
}

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/**
 * Job ids: random for plain jobs; derived from (tenant, idempotencyKey) when a key is given, so two
 * concurrent submissions of the same key collide in BullMQ's add script (which never adds a job whose
 * id exists) instead of creating two jobs. BullMQ ids must not contain ':'.
 */
export function newJobId(): string {
  return `img_${createHash('sha256').update(crypto.randomUUID()).digest('base64url').slice(0, 22)}`;
}

export function idempotentJobId(tenant: string | null, idempotencyKey: string): string {
  return `img_${createHash('sha256').update(`${tenant ?? ''}\n${idempotencyKey}`).digest('base64url').slice(0, 22)}`;
}

export function createImageQueue(config: Config, connection: Redis): Queue {
  return new Queue(IMAGE_QUEUE, {
    connection,
    prefix: config.QUEUE_PREFIX,
    // The events stream carries only ids and small facts (never image bytes); still, keep it bounded.
    streams: { events: { maxLen: config.EVENTS_MAX_LEN } },
  });
}

/**
 * Options of every image job. `priority` is always set: a BullMQ job without one overtakes every
 * prioritized job. Retention is by age so Redis stays bounded.
 */
export function imageJobOptions(config: Config, jobId: string, priority: number): JobsOptions {
  const retentionSeconds = Math.ceil(config.JOB_RETENTION / 1000);
  return {
    jobId,
    priority,
    attempts: config.MAX_ATTEMPTS,
    backoff: { type: BACKOFF_TYPE },
    removeOnComplete: { age: retentionSeconds },
    removeOnFail: { age: retentionSeconds },
  };
}
