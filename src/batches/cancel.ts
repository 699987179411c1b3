/**
 * Cancelling a batch (DELETE /v1/batches/:id): every job that has not ended is cancelled.
 *
 * The batch's jobs are walked in pages of CANCEL_PAGE. Per page, one script (scripts.ts,
 * CANCEL_SCRIPT) takes the plain queued jobs out of the queue, records them as canceled and counts
 * them, atomically, so the counts add up however the request ends. (The other terminal hook, a job's
 * own webhook, sends nothing for a cancelled job: webhooks/outbox.ts.) Running jobs go through the
 * single-job cancel (src/queue/cancel.ts, cancelJob): flag + broadcast, their worker aborts the
 * upstream call and ends them canceled, which the accounting hook then counts; so do jobs that moved
 * while the page was read.
 *
 * Safe to repeat: a second DELETE cancels what a first one left (a crash half-way) and queues
 * batch.completed if it is due and not queued yet. A batch still `storing` answers BATCH_STORING,
 * unless older than STORING_STALE_MS (its API process died): it is then cancelled with the jobs
 * that got in as its total.
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';
import { readProgress } from '../jobs/record.js';
import { IMAGE_QUEUE } from '../queue/image-queue.js';
import { cancelJob, type CancelOutcome } from '../queue/cancel.js';
import { queueBatchCompleted, type BatchAccountingDeps, type Completion } from './accounting.js';
import { forEachLimit } from './concurrency.js';
import { batchKeys, queueKeyPrefix, toMicros, type BatchRecord } from './record.js';
import { CANCEL_SCRIPT, runScript } from './scripts.js';

/** Jobs per cancel script call. */
export const CANCEL_PAGE = 500;
/**
 * A batch still `storing` after this long was abandoned (storing 100,000 jobs takes well under a
 * minute): DELETE then cancels what got in, instead of answering BATCH_STORING.
 */
export const STORING_STALE_MS = 5 * 60_000;

export interface CancelBatchDeps extends BatchAccountingDeps {
  config: Config;
  redis: Redis;
  queue: Queue;
  now?: () => number;
  /** Cancels one job the script left to it; defaults to src/queue/cancel.ts. */
  cancelOne?: (jobId: string) => Promise<CancelOutcome>;
}

export interface CancelBatchResult {
  /** Jobs that will never run (they were queued). */
  canceled: number;
  /** Jobs that were running: their workers were told to abort; they end as canceled in a moment. */
  canceling: number;
}

export async function cancelBatch(batch: BatchRecord, deps: CancelBatchDeps): Promise<CancelBatchResult> {
  let record = batch;
  const { config, redis, queue } = deps;
  const now = deps.now ?? Date.now;
  const k = batchKeys(config, record.id);
  if (record.status === 'storing') {
    if (now() - record.createdAt < STORING_STALE_MS) {
      throw new PixelmillError('BATCH_STORING', `Batch ${record.id} is still being stored (${record.stored} of ${record.total} jobs so far)`);
    }
    // Abandoned by an API process that died while storing it: what got in is all there will be.
    const inQueue = await redis.zcard(k.jobs);
    await redis.multi().hset(k.record, 'status', 'canceled', 'total', inQueue).hsetnx(k.record, 'canceledAt', String(now())).exec();
    record = { ...record, status: 'canceled', total: inQueue };
  }
  if (record.finishedAt !== null) {
    await queueBatchCompleted(config, redis, record.id, deps);
    return { canceled: 0, canceling: 0 };
  }
  const at = now();
  if (record.status === 'open') {
    await redis.multi().hset(k.record, 'status', 'canceled').hsetnx(k.record, 'canceledAt', String(at)).exec();
  }

  const cancelOne = deps.cancelOne ?? ((jobId: string) => cancelJob({ config, redis, queue }, jobId));
  const q = queueKeyPrefix(config, IMAGE_QUEUE);
  const queueKeys = ['wait', 'paused', 'prioritized', 'delayed', 'active', 'failed', 'completed', 'events'].map((s) => `${q}${s}`);
  const reason = 'CANCELED: the job was cancelled with its batch';
  const error = new PixelmillError('CANCELED', 'the job was cancelled with its batch (DELETE /v1/batches/:id)').toJSON();
  const canceledAt = new Date(at).toISOString();

  let canceled = 0;
  let canceling = 0;
  let due = false;
  let from = 0;
  for (;;) {
    const flat = await redis.zrangebyscore(k.jobs, from, '+inf', 'WITHSCORES', 'LIMIT', 0, CANCEL_PAGE);
    if (flat.length === 0) break;
    const ids = flat.filter((_, i) => i % 2 === 0);
    from = Number(flat[flat.length - 1]) + 1;

    const ended = await redis.hmget(k.done, ...ids);
    const open = ids.filter((_, i) => ended[i] === null);
    if (open.length > 0) {
      const progressRead = await Promise.all(open.map((id) => redis.hget(`${q}${id}`, 'progress')));
      const args: (string | number)[] = [q, k.statusPrefix, at, config.JOB_RETENTION, config.EVENTS_MAX_LEN, reason];
      open.forEach((id, i) => {
        const raw = progressRead[i] ?? null;
        const progress = readProgress(raw === null ? undefined : safeJson(raw));
        const next = { ...progress, canceledAt: progress.canceledAt ?? canceledAt, error };
        args.push(id, raw ?? '', JSON.stringify(next), toMicros(progress.costUsd));
      });
      const [taken, delegated, completion, needsWebhook] = (await runScript(redis, CANCEL_SCRIPT, [k.record, k.done, k.jobs, ...queueKeys], args)) as [
        string[], string[], Completion, number,
      ];
      canceled += taken.length;
      if (needsWebhook === 1 || completion > 0) due = true;
      await forEachLimit(delegated, 16, async (jobId) => {
        const outcome = await cancelOne(jobId);
        if (outcome === 'canceled') canceled += 1;
        else if (outcome === 'canceling') canceling += 1;
      });
    }
    if (ids.length < CANCEL_PAGE) break;
  }
  // The last page may not have been the one that completed the batch (a delegated job's hook may
  // have): queueBatchCompleted checks, and adds the event at most once.
  if (due || canceling === 0) await queueBatchCompleted(config, redis, record.id, deps);
  return { canceled, canceling };
}

function safeJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}
