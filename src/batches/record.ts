/**
 * What pixelmill keeps in Redis for a batch (POST /v1/batches), and how to read it.
 *
 * Keys (`p` = `${QUEUE_PREFIX}:pm:batch:${batchId}`; every key shares QUEUE_PREFIX, so a `{tag}`
 * prefix keeps them in one cluster slot with the queue's keys, as the Lua scripts need):
 *
 * - `p` (hash) the batch record:
 *     status        storing | open | canceled | failed_to_store ("completed" is open + finishedAt)
 *     total         jobs accepted into the batch (fixed when the record is written)
 *     stored        jobs added to the queue so far (reaches total before status becomes open)
 *     n:succeeded, n:failed, n:canceled   terminal counts (each job counted once, see `:done`)
 *     costMicros    sum of terminal jobs' costUsd, in micro-USD (integers add exactly)
 *     createdAt, openedAt, startedAt, finishedAt, canceledAt, webhookQueuedAt   epoch ms
 *     completedBy   the job whose terminal event completed the batch ((open) / (cancel) otherwise)
 *     info          JSON: {tenant, metadata?, webhook?, maxCostUsd?, allowBudgetDowngrade?, skipped}  (written once)
 *     spentMicros   actual spend of the batch's upstream calls so far, per call (src/budget/budgets.ts)
 *     webhook       JSON WebhookTarget, present when batch.completed must be sent
 *   startedAt is the earliest BullMQ `processedOn` among the jobs that have ended (the worker does not
 *   report starts): it is null until the first job ends and may be a little late when the first job to
 *   start is still running.
 * - `p:jobs` (sorted set) job id → its index in the batch (0-based; NDJSON lines and JSON indexes map
 *   to it): the batch's order, and pagination by score.
 * - `p:done` (hash) job id → `status|costMicros` of every job that reached a terminal state: the
 *   accounting script compares against it, so a terminal event that arrives twice counts once and a
 *   changed outcome (a re-run) moves the counts.
 * - `p:s:{succeeded|failed|canceled}` (sorted sets) job id → index, per terminal status: pagination
 *   of GET /v1/batches/:id/jobs?status=… without scanning the batch.
 *
 * Retention: every key expires JOB_RETENTION after the batch was created or after its last job ended,
 * whichever is later (the accounting script renews the expiry). Nothing here holds image bytes.
 */
import { randomUUID, createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Config } from '../config/env.js';
import { metadataSchema, webhookSchema, type WebhookTarget } from '../jobs/request.js';

export const BATCH_TERMINAL_STATUSES = ['succeeded', 'failed', 'canceled'] as const;
export type BatchTerminalStatus = (typeof BATCH_TERMINAL_STATUSES)[number];

/** Stored states; `completed` is shown when an open batch has a finishedAt. */
export type BatchStoredStatus = 'storing' | 'open' | 'canceled' | 'failed_to_store';
export type BatchStatus = 'storing' | 'open' | 'completed' | 'canceled' | 'failed_to_store';

export function batchKeys(config: Config, batchId: string) {
  const p = `${config.QUEUE_PREFIX}:pm:batch:${batchId}`;
  return {
    record: p,
    jobs: `${p}:jobs`,
    done: `${p}:done`,
    /** Prefix of the per-status sets; append the status. */
    statusPrefix: `${p}:s:`,
    byStatus: (status: BatchTerminalStatus) => `${p}:s:${status}`,
    /** Every key of the batch (for expiry and deletion). */
    all: () => [p, `${p}:jobs`, `${p}:done`, ...BATCH_TERMINAL_STATUSES.map((s) => `${p}:s:${s}`)],
  };
}

/** BullMQ's key of an image job's hash (its layout: `{prefix}:{queue}:{jobId}`). */
export function queueKeyPrefix(config: Config, queueName: string): string {
  return `${config.QUEUE_PREFIX}:${queueName}:`;
}

/** Batch ids: random, URL-safe, recognisable. */
export function newBatchId(): string {
  return `bat_${createHash('sha256').update(randomUUID()).digest('base64url').slice(0, 22)}`;
}

export const BATCH_ID_PATTERN = /^bat_[A-Za-z0-9_-]{1,64}$/;

export const batchInfoSchema = z.object({
  tenant: z.string().nullable(),
  metadata: metadataSchema.optional(),
  webhook: webhookSchema.optional(),
  maxCostUsd: z.number().positive().optional(),
  /** Over maxCostUsd, Pro calls run on Nano Banana 2 instead of failing (src/budget/budgets.ts). */
  allowBudgetDowngrade: z.boolean().optional(),
  /** Jobs left out by skipInvalid. */
  skipped: z.number().int().min(0),
});
export type BatchInfo = z.infer<typeof batchInfoSchema>;

export interface BatchRecord {
  id: string;
  status: BatchStoredStatus;
  info: BatchInfo;
  total: number;
  stored: number;
  counts: Record<BatchTerminalStatus, number>;
  costMicros: number;
  createdAt: number;
  openedAt: number | null;
  startedAt: number | null;
  finishedAt: number | null;
  canceledAt: number | null;
  webhookQueuedAt: number | null;
  webhook: WebhookTarget | undefined;
}

const STORED_STATUSES: readonly BatchStoredStatus[] = ['storing', 'open', 'canceled', 'failed_to_store'];

/** Read a batch record; undefined when it does not exist (or was never a batch). */
export async function readBatchRecord(config: Config, redis: Redis, batchId: string): Promise<BatchRecord | undefined> {
  if (!BATCH_ID_PATTERN.test(batchId)) return undefined;
  const h = await redis.hgetall(batchKeys(config, batchId).record);
  return parseBatchRecord(batchId, h);
}

export function parseBatchRecord(batchId: string, h: Record<string, string>): BatchRecord | undefined {
  if (!h['info'] || !h['status']) return undefined;
  const info = batchInfoSchema.safeParse(JSON.parse(h['info']));
  const status = h['status'] as BatchStoredStatus;
  if (!info.success || !STORED_STATUSES.includes(status)) return undefined;
  const int = (k: string) => Number.parseInt(h[k] ?? '0', 10) || 0;
  const msOrNull = (k: string) => (h[k] === undefined ? null : Number(h[k]));
  const webhook = h['webhook'] ? webhookSchema.safeParse(JSON.parse(h['webhook'])) : undefined;
  return {
    id: batchId,
    status,
    info: info.data,
    total: int('total'),
    stored: int('stored'),
    counts: { succeeded: int('n:succeeded'), failed: int('n:failed'), canceled: int('n:canceled') },
    costMicros: int('costMicros'),
    createdAt: int('createdAt'),
    openedAt: msOrNull('openedAt'),
    startedAt: msOrNull('startedAt'),
    finishedAt: msOrNull('finishedAt'),
    canceledAt: msOrNull('canceledAt'),
    webhookQueuedAt: msOrNull('webhookQueuedAt'),
    webhook: webhook?.success ? webhook.data : undefined,
  };
}

/** USD to integer micro-USD (what the counters add). */
export function toMicros(usd: number): number {
  return Number.isFinite(usd) && usd > 0 ? Math.round(usd * 1_000_000) : 0;
}

export function fromMicros(micros: number): number {
  return Math.round(micros) / 1_000_000;
}
