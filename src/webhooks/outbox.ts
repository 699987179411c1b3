/**
 * The webhook outbox: turns an object's final state into a delivery on the webhook queue.
 *
 * - Image jobs: `createWebhookEventHook` is a terminal hook (jobs/terminal.ts). The image worker runs
 *   it before it records the job's final state, so a worker dying in between re-runs the job and the
 *   hook, never losing the event. `succeeded` → image.succeeded, `failed` → image.failed, `canceled` →
 *   nothing (the caller asked for it; no image.succeeded and no image.failed).
 * - Batches and experiments call `enqueueWebhookEvent` themselves (batch.completed, experiment.completed).
 *
 * Idempotent: the delivery id (= webhook-id) is derived from (type, object id), the record is created
 * once (Lua) and the BullMQ job id is the delivery id, so an event queued twice is sent as one event
 * with one webhook-id. `webhook.events` filters: an event not listed is not queued at all.
 */
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';
import type { TerminalHook } from '../jobs/terminal.js';
import type { WebhookEvent, WebhookTarget } from '../jobs/request.js';
import { DeliveryStore } from './deliveries.js';
import { MAX_PAYLOAD_BYTES } from './render.js';
import { WEBHOOK_JOB_NAME, createWebhookQueue, deliveryJobOptions, webhookDeliveryId, type DeliveryJobData } from './queue.js';

export interface WebhookEventInput {
  type: WebhookEvent;
  /** The job, batch or experiment id. */
  objectId: string;
  tenant: string | null;
  webhook: WebhookTarget;
  /**
   * Data to send instead of rendering the object when the event is delivered (at most 20 KB of JSON).
   * Usually omitted: the worker renders the object as GET answers it, with fresh presigned URLs.
   */
  payloadData?: unknown;
  /** When the event happened (ISO); now by default. A re-queued event keeps the first time. */
  at?: string;
}

// One Queue per connection for callers that hand us a Redis (hooks run per job; a Queue is not free).
const queues = new WeakMap<Redis, Queue>();

async function queueFor(config: Config, redisOrQueue: Redis | Queue): Promise<{ queue: Queue; redis: Redis }> {
  if (redisOrQueue instanceof Queue) {
    // BullMQ 6 keeps the raw client on its Redis backend.
    const backend = redisOrQueue.getBackend() as unknown as { client: Promise<Redis> };
    return { queue: redisOrQueue, redis: await backend.client };
  }
  let queue = queues.get(redisOrQueue);
  if (!queue || queue.qualifiedName !== `${config.QUEUE_PREFIX}:webhooks`) {
    queue = createWebhookQueue(config, redisOrQueue);
    queue.on('error', () => {});
    queues.set(redisOrQueue, queue);
  }
  return { queue, redis: redisOrQueue };
}

/** Queue one event for delivery (idempotent: the same type and object make one delivery). */
export async function enqueueWebhookEvent(config: Config, redisOrQueue: Redis | Queue, event: WebhookEventInput): Promise<void> {
  await enqueueWebhookEventWithId(config, redisOrQueue, event);
}

/** As enqueueWebhookEvent; resolves to the delivery id, or undefined when `webhook.events` filters the event out. */
export async function enqueueWebhookEventWithId(config: Config, redisOrQueue: Redis | Queue, event: WebhookEventInput): Promise<string | undefined> {
  if (event.webhook.events && !event.webhook.events.includes(event.type)) return undefined;
  if (event.payloadData !== undefined && Buffer.byteLength(JSON.stringify(event.payloadData)) > MAX_PAYLOAD_BYTES) {
    throw new Error(`webhook payloadData for ${event.objectId} is over ${MAX_PAYLOAD_BYTES} bytes: send less, or let the worker render the object`);
  }
  const { queue, redis } = await queueFor(config, redisOrQueue);
  const id = webhookDeliveryId(event.type, event.objectId);
  const now = Date.now();
  const eventAt = event.at ?? new Date(now).toISOString();
  // Record first, then the job: both are idempotent and both always run, so a crash between them
  // heals when the hook runs again; a job that finds no record creates it from its data.
  await new DeliveryStore(redis, config).create({
    id, type: event.type, objectId: event.objectId, tenant: event.tenant, url: event.webhook.url, eventAt, createdAtMs: now,
  });
  const data: DeliveryJobData = {
    v: 1, deliveryId: id, generation: 0, type: event.type, objectId: event.objectId, tenant: event.tenant, url: event.webhook.url, eventAt,
    ...(event.payloadData !== undefined ? { payloadData: event.payloadData } : {}),
  };
  await queue.add(WEBHOOK_JOB_NAME, data, deliveryJobOptions(config, id, 0));
  return id;
}

/** The image worker's terminal hook: image.succeeded / image.failed for jobs that carry a webhook. */
export function createWebhookEventHook(config: Config, redis: Redis): TerminalHook {
  return async (event) => {
    const webhook = event.data.request.webhook;
    if (!webhook || event.status === 'canceled') return;
    await enqueueWebhookEvent(config, redis, {
      type: event.status === 'succeeded' ? 'image.succeeded' : 'image.failed',
      objectId: event.jobId, tenant: event.data.tenant, webhook, at: event.at,
    });
  };
}

/**
 * For the producers (jobs, batches, experiments): a request carrying `webhook` is refused with 400
 * when WEBHOOK_SECRET is not set, because deliveries are never sent unsigned. `path` names the field
 * in the answer (e.g. `webhook`, `defaults.webhook`).
 */
export function assertWebhooksEnabled(config: Config, path = 'webhook'): void {
  if (config.WEBHOOK_SECRET && config.WEBHOOK_SECRET.length > 0) return;
  const message = 'webhooks are not enabled on this server: WEBHOOK_SECRET is not set (deliveries are never sent unsigned)';
  throw new PixelmillError('INVALID_REQUEST', `Invalid request (${path}: ${message})`, { details: { issues: [{ path, message }] } });
}
