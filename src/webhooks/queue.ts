/**
 * The webhook delivery queue: its name, the delivery job's data, and the options every delivery job is
 * added with. One BullMQ job per (event, generation): the job id is the delivery id (the event's
 * `webhook-id`) for the first send and `<id>-r<n>` for the n-th replay, so adding the same event
 * twice (a terminal hook that ran twice) makes one job.
 */
import { createHash } from 'node:crypto';
import { Queue, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Config } from '../config/env.js';
import { WEBHOOK_EVENTS, type WebhookEvent } from '../jobs/request.js';

export const WEBHOOK_QUEUE = 'webhooks';
export const WEBHOOK_JOB_NAME = 'deliver';
/** Custom backoff the webhook worker implements: WEBHOOK_RETRY_SCHEDULE with jitter, or Retry-After. */
export const WEBHOOK_BACKOFF_TYPE = 'pixelmill-webhook-schedule';

export const deliveryJobSchema = z.object({
  v: z.literal(1),
  deliveryId: z.string().min(1),
  /** 0 for the first send; n for the n-th replay (a stale generation's job does nothing). */
  generation: z.number().int().min(0),
  type: z.enum(WEBHOOK_EVENTS),
  objectId: z.string().min(1),
  tenant: z.string().nullable(),
  url: z.string().min(1),
  /** ISO time the event happened: the payload's `timestamp`. */
  eventAt: z.string(),
  /** Data given by the producer of the event instead of rendering the object at delivery time. */
  payloadData: z.unknown().optional(),
});
export type DeliveryJobData = z.infer<typeof deliveryJobSchema>;

/**
 * The delivery id, which is the `webhook-id` header: the same for every send of one event (retries,
 * re-runs of the hook, replays), and different for different events.
 */
export function webhookDeliveryId(type: WebhookEvent, objectId: string): string {
  return `evt_${createHash('sha256').update(`${type}\n${objectId}`).digest('base64url').slice(0, 27)}`;
}

export function deliveryJobId(deliveryId: string, generation: number): string {
  return generation === 0 ? deliveryId : `${deliveryId}-r${generation}`;
}

export function createWebhookQueue(config: Config, connection: Redis): Queue {
  return new Queue(WEBHOOK_QUEUE, {
    connection,
    prefix: config.QUEUE_PREFIX,
    streams: { events: { maxLen: config.EVENTS_MAX_LEN } },
  });
}

/** attempts = the schedule's length (its first entry is the delay before the first send). */
export function deliveryJobOptions(config: Config, deliveryId: string, generation: number): JobsOptions {
  const retentionSeconds = Math.ceil(config.JOB_RETENTION / 1000);
  const first = config.WEBHOOK_RETRY_SCHEDULE[0] ?? 0;
  return {
    jobId: deliveryJobId(deliveryId, generation),
    attempts: config.WEBHOOK_RETRY_SCHEDULE.length,
    backoff: { type: WEBHOOK_BACKOFF_TYPE },
    ...(first > 0 && generation === 0 ? { delay: first } : {}),
    removeOnComplete: { age: retentionSeconds },
    removeOnFail: { age: retentionSeconds },
  };
}
