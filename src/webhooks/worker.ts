/**
 * The webhook delivery worker: a BullMQ Worker on the 'webhooks' queue, in its own process
 * (`pixelmill webhook-worker`), so a slow receiver never holds an image worker.
 *
 * One delivery job = one event to one URL:
 *  1. The record (deliveries.ts) decides: a stale generation (a replay started since) or a finished
 *     record does nothing; an endpoint disabled by an earlier 410 records `disabled` without sending.
 *  2. The body is rendered at the first send (render.ts), from the object's current state, and stored
 *     in the record; every retry sends the same bytes with the same webhook-id (only webhook-timestamp
 *     and the signatures change, as the spec signs id.timestamp.body). Presigned URLs expire, so a body
 *     older than half of PRESIGN_TTL is rendered again (same webhook-id, fresh links), and a replay
 *     always renders again. An image event whose job has not recorded its final state yet (the hook
 *     runs just before) waits without using an attempt.
 *  3. Send (send.ts) through the SSRF-guarded dispatcher, signed with every WEBHOOK_SECRET.
 *
 * Retries use BullMQ's attempts (= length of WEBHOOK_RETRY_SCHEDULE) with a custom backoff: the
 * processor computes the delay — the schedule's next step ±10 % jitter, or the receiver's Retry-After
 * when that is longer (capped at 24 h) — stores it as nextAttemptAt and hands it to BullMQ on the
 * thrown error, so the record and the queue agree. After the last attempt the record becomes
 * `failed` (the dead letter, listed by GET /v1/webhooks/deliveries?status=failed and replayable).
 * A worker killed mid-send loses nothing: its job's lock lapses and the stalled-job check gives it to
 * another worker, which sends the same event (same webhook-id) again. Receivers dedupe on webhook-id.
 */
import { DelayedError, Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Dispatcher } from 'undici';
import type { Config } from '../config/env.js';
import { createLogger, type Logger } from '../logging/logger.js';
import { createGuardedDispatcher } from '../net/ssrf-guard.js';
import { createRedis } from '../queue/connection.js';
import { IMAGE_QUEUE } from '../queue/image-queue.js';
import { createS3Store, type ObjectStore } from '../storage/object-store.js';
import { DeliveryStore, type StoredDelivery } from './deliveries.js';
import { WEBHOOK_BACKOFF_TYPE, WEBHOOK_QUEUE, deliveryJobSchema, type DeliveryJobData } from './queue.js';
import { buildPayload, renderEventData, type RenderDeps } from './render.js';
import './renderers.js';
import { RETRY_AFTER_CAP_MS, sendWebhook } from './send.js';
import { createSigner, type WebhookSigner } from './sign.js';

export interface WebhookWorkerDeps {
  logger: Logger;
  /** Connection for the Worker (blocking commands); created from config when absent. */
  connection: Redis;
  store: ObjectStore;
  /** Where deliveries are sent through; the SSRF-guarded Agent by default. */
  dispatcher: Dispatcher;
  now: () => number;
  random: () => number;
  concurrency: number;
}

export interface RunningWebhookWorker {
  readonly worker: Worker;
  /** Stop taking deliveries and wait for the ones in flight (each bounded by WEBHOOK_TIMEOUT_MS). `force`: do not wait (they are re-sent after the lock lapses). */
  close(force?: boolean): Promise<void>;
}

/** A failed attempt that BullMQ retries after `delayMs` (read by the backoff strategy). */
class RetryDelivery extends Error {
  constructor(message: string, readonly delayMs: number) {
    super(message);
  }
}

/** Delay before attempt `attemptsMade + 1`: the schedule's step with ±10 % jitter. */
export function scheduledDelay(schedule: readonly number[], attemptsMade: number, random: () => number): number {
  const base = schedule[Math.min(attemptsMade, schedule.length - 1)] ?? 0;
  return Math.max(0, Math.round(base * (0.9 + 0.2 * random())));
}

/** Wait before looking again at a job that has not recorded its final state: short at first, at most 30 s. */
function waitForJobMs(ageMs: number): number {
  return Math.min(30_000, Math.max(100, Math.round(ageMs / 4)));
}

export function startWebhookWorker(config: Config, deps: Partial<WebhookWorkerDeps> = {}): RunningWebhookWorker {
  const logger = deps.logger ?? createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-webhooks' });
  const concurrency = deps.concurrency ?? config.WEBHOOK_CONCURRENCY;
  const connection = deps.connection ?? createRedis(config, 'worker');
  const commands = createRedis(config, 'worker');
  const store = deps.store ?? createS3Store(config, { maxSockets: 8 });
  const dispatcher = deps.dispatcher ?? createGuardedDispatcher(config, { connections: concurrency });
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;
  const deliveries = new DeliveryStore(commands, config, now);
  const imageQueue = new Queue(IMAGE_QUEUE, { connection: commands, prefix: config.QUEUE_PREFIX });
  imageQueue.on('error', () => {});
  const renderDeps: RenderDeps = { config, redis: commands, store, imageQueue, now };
  let signer: WebhookSigner | undefined;
  if (config.WEBHOOK_SECRET?.length) signer = createSigner(config.WEBHOOK_SECRET);
  else logger.warn('WEBHOOK_SECRET is not set: deliveries wait (and retry) until it is, as they are never sent unsigned');

  const processor = async (job: Job, token?: string): Promise<string> => {
    try {
      return await deliver(job, token);
    } catch (err) {
      if (err instanceof RetryDelivery || err instanceof UnrecoverableError || err instanceof DelayedError) throw err;
      // A step around the send failed (Redis, rendering): note it on the record and retry on the schedule.
      const e = err instanceof Error ? err : new Error(String(err));
      const d = deliveryJobSchema.safeParse(job.data);
      const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      if (d.success) {
        await deliveries
          .update({ id: d.data.deliveryId, tenant: d.data.tenant }, { lastError: `internal: ${e.message}` }, last ? 'failed' : undefined, d.data.generation)
          .catch(() => {});
      }
      logger.warn({ jobId: job.id, err: e.message, last }, 'webhook delivery step failed');
      if (last) throw new UnrecoverableError(e.message);
      throw new RetryDelivery(e.message, scheduledDelay(config.WEBHOOK_RETRY_SCHEDULE, job.attemptsMade + 1, random));
    }
  };

  const deliver = async (job: Job, token?: string): Promise<string> => {
    const parsed = deliveryJobSchema.safeParse(job.data);
    if (!parsed.success) throw new UnrecoverableError(`not a webhook delivery job: ${parsed.error.issues[0]?.message}`);
    const data = parsed.data;
    const log = logger.child({ deliveryId: data.deliveryId, type: data.type, objectId: data.objectId, endpoint: hostOf(data.url) });

    let rec = await deliveries.get(data.deliveryId);
    if (!rec) {
      // The producer died between queueing the job and writing the record: write it now.
      await deliveries.create({
        id: data.deliveryId, type: data.type, objectId: data.objectId, tenant: data.tenant, url: data.url, eventAt: data.eventAt, createdAtMs: now(),
      });
      rec = await deliveries.get(data.deliveryId);
      if (!rec) throw new Error(`delivery record ${data.deliveryId} could not be written`);
    }
    if (rec.generation !== data.generation || rec.status !== 'pending') return `nothing to do (${rec.status}, generation ${rec.generation})`;
    const gen = rec.generation;

    const disabled = await deliveries.disabledEndpoint(rec.url);
    if (disabled) {
      await deliveries.update(rec, { lastError: `not sent: the endpoint answered 410 Gone at ${disabled.at} (delivery ${disabled.deliveryId}); replay a delivery to re-enable it`, nextAttemptAt: null }, 'disabled', gen);
      log.info('not sent: endpoint disabled');
      return 'disabled';
    }

    // 2. The body: rendered once, re-rendered only when its presigned links are going stale.
    let body = rec.body;
    if (!body || rec.renderedAtMs === null || now() - rec.renderedAtMs > config.PRESIGN_TTL / 2) {
      const rendered = await render(rec, data);
      if (rendered.kind === 'wait') {
        await job.moveToDelayed(now() + waitForJobMs(now() - rec.createdAtMs), token);
        throw new DelayedError();
      }
      if (rendered.kind === 'stop') return rendered.why;
      body = rendered.body;
      await deliveries.update(rec, { body, renderedAtMs: now() }, undefined, gen);
    }

    const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    const retryOrDeadLetter = async (error: string, statusCode: number | null, retryAfterMs?: number): Promise<never> => {
      if (last) {
        await deliveries.update(rec, { lastError: error, lastStatusCode: statusCode, nextAttemptAt: null }, 'failed', gen);
        log.warn({ err: error, attempts: job.attemptsMade + 1 }, 'webhook dead-lettered after its last attempt');
        throw new UnrecoverableError(error);
      }
      const scheduled = scheduledDelay(config.WEBHOOK_RETRY_SCHEDULE, job.attemptsMade + 1, random);
      const delayMs = Math.max(scheduled, Math.min(RETRY_AFTER_CAP_MS, retryAfterMs ?? 0));
      await deliveries.update(rec, { lastError: error, lastStatusCode: statusCode, nextAttemptAt: new Date(now() + delayMs).toISOString() }, undefined, gen);
      log.info({ err: error, delayMs }, 'webhook attempt failed; retrying');
      throw new RetryDelivery(error, delayMs);
    };

    if (!signer) return retryOrDeadLetter('not sent: WEBHOOK_SECRET is not set on the webhook worker', null);

    // 3. Send.
    await deliveries.countAttempt(rec.id);
    const outcome = await sendWebhook({
      url: rec.url, body, headers: signer(rec.id, new Date(now()), body), dispatcher, timeoutMs: config.WEBHOOK_TIMEOUT_MS, now,
    });
    switch (outcome.kind) {
      case 'delivered':
        await deliveries.update(rec, { lastStatusCode: outcome.statusCode, lastError: null, nextAttemptAt: null, deliveredAt: new Date(now()).toISOString() }, 'delivered', gen);
        log.info({ statusCode: outcome.statusCode }, 'webhook delivered');
        return 'delivered';
      case 'gone':
        await deliveries.disableEndpoint(rec.url, rec.id);
        await deliveries.update(rec, { lastStatusCode: 410, lastError: 'HTTP 410 Gone: the endpoint is disabled; later events for it are not sent until a delivery to it is replayed', nextAttemptAt: null }, 'disabled', gen);
        log.warn('endpoint answered 410: disabled');
        return 'disabled';
      case 'failed':
        await deliveries.update(rec, { lastStatusCode: outcome.statusCode, lastError: outcome.error, nextAttemptAt: null }, 'failed', gen);
        log.warn({ statusCode: outcome.statusCode, err: outcome.error }, 'webhook failed (not retried)');
        throw new UnrecoverableError(outcome.error);
      case 'retry':
        return retryOrDeadLetter(outcome.error, outcome.statusCode, outcome.retryAfterMs);
    }
  };

  /** The body to send, or why not yet / never. */
  async function render(rec: StoredDelivery, data: DeliveryJobData): Promise<{ kind: 'body'; body: string } | { kind: 'wait' } | { kind: 'stop'; why: string }> {
    if (data.payloadData !== undefined) return { kind: 'body', body: buildPayload(rec.type, rec.eventAt, rec.objectId, data.payloadData) };
    const outcome = await renderEventData(rec.type, rec.objectId, renderDeps);
    switch (outcome.kind) {
      case 'ready':
        return { kind: 'body', body: buildPayload(rec.type, rec.eventAt, rec.objectId, outcome.data) };
      case 'wait':
        return { kind: 'wait' };
      case 'gone':
        await deliveries.update(rec, { lastError: `not sent: ${rec.objectId} no longer exists (past JOB_RETENTION?)`, nextAttemptAt: null }, 'failed', rec.generation);
        return { kind: 'stop', why: 'gone' };
      case 'mismatch':
        await deliveries.update(rec, { lastError: `not sent: ${rec.objectId} ended as ${outcome.status}, so ${rec.type} does not apply`, nextAttemptAt: null }, 'skipped', rec.generation);
        return { kind: 'stop', why: 'skipped' };
    }
  }

  const worker = new Worker(WEBHOOK_QUEUE, processor, {
    connection,
    prefix: config.QUEUE_PREFIX,
    concurrency,
    lockDuration: config.WORKER_LOCK_DURATION_MS,
    stalledInterval: config.WORKER_STALLED_INTERVAL_MS,
    maxStalledCount: 2,
    settings: {
      backoffStrategy: (attemptsMade: number, type?: string, err?: Error) => {
        if (type !== WEBHOOK_BACKOFF_TYPE) return 0;
        if (err instanceof RetryDelivery) return err.delayMs;
        return scheduledDelay(config.WEBHOOK_RETRY_SCHEDULE, attemptsMade, random);
      },
    },
  });
  worker.on('error', (err) => logger.error({ err: err.message }, 'webhook worker error'));
  // BullMQ can fail a job without our processor deciding it (stalled more than maxStalledCount times):
  // a record left pending then would never change, so mark it failed (replayable).
  worker.on('failed', (job, err) => {
    if (!job) return;
    void (async () => {
      if ((await job.getState()) !== 'failed') return;
      const d = deliveryJobSchema.safeParse(job.data);
      if (!d.success) return;
      const rec = await deliveries.get(d.data.deliveryId);
      if (rec && rec.generation === d.data.generation && rec.status === 'pending') {
        await deliveries.update(rec, { lastError: `gave up: ${err.message}`, nextAttemptAt: null }, 'failed', rec.generation);
      }
    })().catch((e: unknown) => logger.warn({ err: String(e) }, 'could not record a failed delivery'));
  });
  logger.info({ concurrency, queue: `${config.QUEUE_PREFIX}:${WEBHOOK_QUEUE}` }, 'webhook worker started');

  let closing: Promise<void> | undefined;
  return {
    worker,
    close(force = false) {
      closing ??= (async () => {
        try {
          await worker.close(force);
        } finally {
          await imageQueue.close().catch(() => {});
          if (!deps.dispatcher) await dispatcher.close().catch(() => {});
          if (!deps.store) store.destroy();
          await commands.quit().catch(() => {});
          if (!deps.connection) await connection.quit().catch(() => {});
          logger.info('webhook worker stopped');
        }
      })();
      return closing;
    },
  };
}

/** Log the endpoint's host only: a webhook URL may carry a token in its path or query. */
function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return '(invalid url)';
  }
}
