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
 * BullMQ's largest priority (PRIORITY_LIMIT in bullmq 6: 2^21 - 1). 0 means "no priority", and such a
 * job overtakes every prioritized one, so the encoding below never yields 0.
 */
export const BULLMQ_MAX_PRIORITY = 2 ** 21 - 1;
/** Positions within one request priority: 200,000 slots × 10 priorities stays under BULLMQ_MAX_PRIORITY. */
export const PRIORITY_SLOTS = 200_000;

/**
 * Priority and fairness in one number (see README "Priority and fairness"). BullMQ serves the lowest
 * priority value first and, within one value, in insertion order. Encoding
 *
 *   (request priority - 1) × PRIORITY_SLOTS + 1 + min(position, PRIORITY_SLOTS - 1)
 *
 * keeps every request priority 1 job ahead of every priority 2 job (and so on), while within one
 * request priority job k of every batch competes with job k of every other batch: a 10-job batch
 * submitted after a 10,000-job one is served round-robin with it instead of after it. Single jobs
 * have position 0; experiment runs their run index.
 */
export function encodeQueuePriority(requestPriority: number, position: number): number {
  const p = Math.min(10, Math.max(1, Math.trunc(requestPriority)));
  const slot = Math.min(PRIORITY_SLOTS - 1, Math.max(0, Math.trunc(position)));
  return (p - 1) * PRIORITY_SLOTS + 1 + slot;
}

/**
 * Options of every image job. `priority` is always set: a BullMQ job without one overtakes every
 * prioritized job. `position` is the job's index within its batch (0 for a single job, the run index
 * for an experiment), see encodeQueuePriority. Retention is by age so Redis stays bounded.
 */
export function imageJobOptions(config: Config, jobId: string, priority: number, position = 0): JobsOptions {
  const retentionSeconds = Math.ceil(config.JOB_RETENTION / 1000);
  return {
    jobId,
    priority: encodeQueuePriority(priority, position),
    attempts: config.MAX_ATTEMPTS,
    backoff: { type: BACKOFF_TYPE },
    removeOnComplete: { age: retentionSeconds },
    removeOnFail: { age: retentionSeconds },
  };
}
