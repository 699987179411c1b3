/**
 * Batch accounting: a job's terminal event updates its batch's counts exactly once per job (even when
 * the job is re-run), and the last one queues batch.completed.
 *
 * - Counting is one Lua script per event (scripts.ts, ACCOUNT_SCRIPT): the `:done` hash remembers each
 *   job's counted outcome, so a hook that runs twice counts once, and a job whose outcome changes (a
 *   re-run after a crash that ends differently) moves from one count to the other in the same step.
 * - The script that makes terminal == total sets finishedAt with HSETNX: one caller sees the batch
 *   complete, and it records which job did (`completedBy`). That job's hook queues the event through
 *   the webhook outbox with a deterministic id (one webhook-id per batch), then records
 *   `webhookQueuedAt`. A crash in between is repaired by the re-run of that job's hook (the worker
 *   re-runs the job), a repeated DELETE, or a GET of the batch: each sees "complete, webhook not
 *   queued" and queues it again under the same id, which the outbox turns into the same delivery.
 */
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { WebhookTarget } from '../jobs/request.js';
import type { TerminalHook, TerminalStatus } from '../jobs/terminal.js';
import { IMAGE_QUEUE } from '../queue/image-queue.js';
import { enqueueWebhookEvent } from '../webhooks/outbox.js';
import { batchKeys, queueKeyPrefix, readBatchRecord, toMicros } from './record.js';
import { ACCOUNT_SCRIPT, runScript } from './scripts.js';

/** What the outbox needs to queue batch.completed (part of the webhook outbox's API). */
export interface BatchCompletedEvent {
  type: 'batch.completed';
  objectId: string;
  tenant: string | null;
  webhook: WebhookTarget;
}

export type EnqueueBatchEvent = (event: BatchCompletedEvent) => Promise<unknown>;

export interface BatchAccountingDeps {
  /** Queue batch.completed; defaults to the webhook outbox (src/webhooks/outbox.ts). */
  enqueueEvent?: EnqueueBatchEvent;
  now?: () => number;
}

/** 0: not complete; 1: complete before this call; 2: this call completed the batch. */
export type Completion = 0 | 1 | 2;

export interface TerminalRecorded {
  /** 1 counted or moved, 0 already counted as is, -1 no such batch, -2 not a job of the batch. */
  changed: number;
  completion: Completion;
}

export function defaultEnqueueBatchEvent(config: Config, redis: Redis): EnqueueBatchEvent {
  return (event) => enqueueWebhookEvent(config, redis, event);
}

/** Count one job's terminal outcome in its batch (idempotent), and queue batch.completed when due. */
export async function recordBatchTerminal(
  config: Config,
  redis: Redis,
  event: { batchId: string; jobId: string; status: TerminalStatus; costUsd: number; atMs: number },
  deps: BatchAccountingDeps = {},
): Promise<TerminalRecorded> {
  const k = batchKeys(config, event.batchId);
  const jobKey = `${queueKeyPrefix(config, IMAGE_QUEUE)}${event.jobId}`;
  const [changed, completion, needsWebhook] = (await runScript(redis, ACCOUNT_SCRIPT, [k.record, k.done, k.jobs, jobKey], [
    event.jobId, event.status, toMicros(event.costUsd), event.atMs, config.JOB_RETENTION, k.statusPrefix,
  ])) as [number, Completion, number];
  if (needsWebhook === 1) await queueBatchCompleted(config, redis, event.batchId, deps);
  return { changed, completion };
}

/**
 * Queue batch.completed for a complete batch whose event is not queued yet. Safe to call more than
 * once: the outbox's id is derived from the batch id, so a second call adds nothing.
 */
export async function queueBatchCompleted(config: Config, redis: Redis, batchId: string, deps: BatchAccountingDeps = {}): Promise<boolean> {
  const record = await readBatchRecord(config, redis, batchId);
  if (!record || record.finishedAt === null || !record.webhook || record.webhookQueuedAt !== null) return false;
  const enqueue = deps.enqueueEvent ?? defaultEnqueueBatchEvent(config, redis);
  await enqueue({ type: 'batch.completed', objectId: batchId, tenant: record.info.tenant, webhook: record.webhook });
  await redis.hsetnx(batchKeys(config, batchId).record, 'webhookQueuedAt', String((deps.now ?? Date.now)()));
  return true;
}

/**
 * The terminal hook the image worker runs for every job (and the cancel path for queued jobs).
 * Jobs without a batch are none of its business.
 */
export function createBatchTerminalHook(config: Config, redis: Redis, deps: BatchAccountingDeps = {}): TerminalHook {
  const now = deps.now ?? Date.now;
  return async (event) => {
    const batchId = event.data.batchId;
    if (!batchId) return;
    const at = Date.parse(event.at);
    await recordBatchTerminal(config, redis, {
      batchId, jobId: event.jobId, status: event.status, costUsd: event.costUsd, atMs: Number.isFinite(at) ? at : now(),
    }, deps);
  };
}
