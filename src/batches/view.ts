/**
 * The public view of a batch (GET /v1/batches/:id, the batch.completed payload, the CLI's progress
 * bar) and the pages of its jobs (GET /v1/batches/:id/jobs).
 *
 * Counts: succeeded, failed and canceled are exact (the accounting script). running and retrying
 * are read from BullMQ's active list and delayed set (jobs of this batch in them; at most
 * INFLIGHT_SCAN_CAP entries of each are looked at, `countsExact` says when that cap was reached);
 * queued is the rest. So the six always add up to total.
 *
 * etaSeconds = remaining / (terminal / elapsed), elapsed since startedAt (or since the batch opened
 * when no job has ended yet), null before the first job ends.
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { WebhookTarget } from '../jobs/request.js';
import { IMAGE_QUEUE } from '../queue/image-queue.js';
import { viewJob, type JobOutputView, type JobStatus } from '../queue/job-view.js';
import type { ErrorInfo } from '../jobs/record.js';
import type { ObjectStore } from '../storage/object-store.js';
import {
  BATCH_TERMINAL_STATUSES, batchKeys, fromMicros, queueKeyPrefix, readBatchRecord, type BatchRecord, type BatchStatus,
  type BatchTerminalStatus,
} from './record.js';
import { INFLIGHT_SCRIPT, runScript } from './scripts.js';

/** Entries of BullMQ's active list and delayed set looked at per view. */
export const INFLIGHT_SCAN_CAP = 5_000;

export interface BatchCounts {
  queued: number;
  running: number;
  retrying: number;
  succeeded: number;
  failed: number;
  canceled: number;
}

export interface BatchView {
  id: string;
  status: BatchStatus;
  total: number;
  counts: BatchCounts;
  /** false when running/retrying were estimated from a partial scan (see INFLIGHT_SCAN_CAP). */
  countsExact: boolean;
  /** Terminal jobs / total, 0..1. */
  progress: number;
  /** Spent on the jobs that have ended, USD. */
  costUsd: number;
  maxCostUsd: number | null;
  createdAt: string;
  /** When the first job started (the earliest start among the jobs that have ended); null before. */
  startedAt: string | null;
  /** When the last job reached a terminal state. */
  finishedAt: string | null;
  canceledAt: string | null;
  etaSeconds: number | null;
  metadata: Record<string, string> | null;
  webhook?: WebhookTarget;
  /** Jobs left out of the batch by skipInvalid. */
  skipped: number;
}

export interface BatchViewDeps {
  config: Config;
  redis: Redis;
  now?: () => number;
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

export function batchStatus(record: BatchRecord): BatchStatus {
  if (record.status === 'open' && record.finishedAt !== null) return 'completed';
  return record.status;
}

export async function batchView(record: BatchRecord, deps: BatchViewDeps): Promise<BatchView> {
  const { config, redis } = deps;
  const now = (deps.now ?? Date.now)();
  const { succeeded, failed, canceled } = record.counts;
  const terminal = succeeded + failed + canceled;
  const remaining = Math.max(0, record.total - terminal);
  let running = 0;
  let retrying = 0;
  let exact = true;
  if (remaining > 0 && record.status !== 'failed_to_store') {
    const k = batchKeys(config, record.id);
    const q = queueKeyPrefix(config, IMAGE_QUEUE);
    const [r, d, e] = (await runScript(redis, INFLIGHT_SCRIPT, [k.jobs, k.done, `${q}active`, `${q}delayed`], [INFLIGHT_SCAN_CAP])) as number[];
    running = Math.min(r ?? 0, remaining);
    retrying = Math.min(d ?? 0, remaining - running);
    exact = e === 1;
  }
  const since = record.startedAt ?? record.openedAt ?? record.createdAt;
  const elapsedSeconds = Math.max(0.001, (now - since) / 1000);
  let etaSeconds: number | null = null;
  if (remaining === 0) etaSeconds = 0;
  else if (terminal > 0 && record.status !== 'failed_to_store') etaSeconds = Math.ceil(remaining / (terminal / elapsedSeconds));

  return {
    id: record.id,
    status: batchStatus(record),
    total: record.total,
    counts: { queued: remaining - running - retrying, running, retrying, succeeded, failed, canceled },
    countsExact: exact,
    progress: record.total > 0 ? Math.round((terminal / record.total) * 10_000) / 10_000 : 1,
    costUsd: fromMicros(record.costMicros),
    maxCostUsd: record.info.maxCostUsd ?? null,
    createdAt: new Date(record.createdAt).toISOString(),
    startedAt: iso(record.startedAt),
    finishedAt: iso(record.finishedAt),
    canceledAt: iso(record.canceledAt),
    etaSeconds,
    metadata: record.info.metadata ?? null,
    ...(record.webhook ? { webhook: record.webhook } : {}),
    skipped: record.info.skipped,
  };
}

/**
 * The batch's view, or undefined when it does not exist or belongs to another tenant. `tenant`
 * undefined skips the tenant check (the webhook renderer, which works for the batch's own tenant).
 */
export async function getBatchView(batchId: string, tenant: string | null | undefined, deps: BatchViewDeps): Promise<BatchView | undefined> {
  const record = await readBatchRecord(deps.config, deps.redis, batchId);
  if (!record || (tenant !== undefined && record.info.tenant !== tenant)) return undefined;
  return batchView(record, deps);
}

// ---------------------------------------------------------------------------------------------
// Jobs of a batch

/** A job in a batch's job list: enough to act on it; GET /v1/jobs/:id has the rest. */
export interface BatchJobEntry {
  id: string;
  /** Position in the batch: the JSON index, or the NDJSON job line's order (0-based). */
  index: number;
  status: JobStatus;
  output?: JobOutputView;
  costUsd?: number;
  error?: ErrorInfo;
  metadata: Record<string, string> | null;
  /** Set when the job's record is gone (retention); status is then the one counted. */
  expired?: true;
}

export interface BatchJobsPage {
  data: BatchJobEntry[];
  /** Pass as ?cursor= for the next page; null at the end. */
  nextCursor: string | null;
}

export interface BatchJobsQuery {
  status?: JobStatus;
  /** Opaque; the index to start from. */
  cursor?: string;
  limit: number;
}

export interface BatchJobsDeps extends BatchViewDeps {
  queue: Queue;
  store: ObjectStore;
}

/** Batch entries read per round when filtering by a non-terminal status. */
const SCAN_WINDOW = 500;
/** At most this many entries are looked at per request for a non-terminal status filter. */
export const NON_TERMINAL_SCAN_LIMIT = 5_000;

/**
 * A page of the batch's jobs, in batch order. Without a status, or with a terminal one, a page costs
 * O(log n + limit) (the batch's job set or the per-status set). A non-terminal status (queued,
 * running, retrying) is found by reading the state of jobs not yet ended, at most
 * NON_TERMINAL_SCAN_LIMIT per request: such a page may hold fewer than `limit` jobs with a
 * nextCursor still set; follow it until it is null.
 */
export async function listBatchJobs(record: BatchRecord, query: BatchJobsQuery, deps: BatchJobsDeps): Promise<BatchJobsPage> {
  const { config, redis } = deps;
  const k = batchKeys(config, record.id);
  const from = query.cursor === undefined ? 0 : Number(query.cursor);
  const status = query.status;

  if (status === undefined || (BATCH_TERMINAL_STATUSES as readonly string[]).includes(status)) {
    const key = status === undefined ? k.jobs : k.byStatus(status as BatchTerminalStatus);
    const flat = await redis.zrangebyscore(key, from, '+inf', 'WITHSCORES', 'LIMIT', 0, query.limit + 1);
    const rows = pairs(flat);
    const page = rows.slice(0, query.limit);
    // A job counted as ended may show `running` for a moment: its terminal hook runs just before its
    // state is recorded. It is listed as it is.
    const data = await loadEntries(record, page, deps);
    return { data, nextCursor: rows.length > query.limit ? String(rows[query.limit]![1]) : null };
  }

  // queued / running / retrying: scan the jobs that have not ended.
  const found: BatchJobEntry[] = [];
  let cursor = from;
  let scanned = 0;
  for (;;) {
    const flat = await redis.zrangebyscore(k.jobs, cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, SCAN_WINDOW);
    const rows = pairs(flat);
    if (rows.length === 0) return { data: found, nextCursor: null };
    const ended = await redis.hmget(k.done, ...rows.map(([id]) => id));
    const open = rows.filter((_, i) => ended[i] === null);
    const byId = new Map((await loadEntries(record, open, deps)).map((e) => [e.id, e]));
    for (const [i, row] of rows.entries()) {
      scanned += 1;
      cursor = row[1] + 1;
      const entry = byId.get(row[0]);
      if (entry?.status === status) found.push(entry);
      if (found.length >= query.limit) {
        const more = i < rows.length - 1 || rows.length === SCAN_WINDOW;
        return { data: found, nextCursor: more ? String(cursor) : null };
      }
    }
    if (rows.length < SCAN_WINDOW) return { data: found, nextCursor: null };
    if (scanned >= NON_TERMINAL_SCAN_LIMIT) return { data: found, nextCursor: String(cursor) };
  }
}

function pairs(flat: string[]): [string, number][] {
  const out: [string, number][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push([flat[i]!, Number(flat[i + 1])]);
  return out;
}

async function loadEntries(record: BatchRecord, rows: [string, number][], deps: BatchJobsDeps): Promise<BatchJobEntry[]> {
  const { config, queue, store, redis } = deps;
  const done = rows.length > 0 ? await redis.hmget(batchKeys(config, record.id).done, ...rows.map(([id]) => id)) : [];
  return Promise.all(
    rows.map(async ([id, index], i): Promise<BatchJobEntry> => {
      const counted = done[i]?.split('|')[0] as JobStatus | undefined;
      const state = await queue.getJobState(id);
      const job = state === 'unknown' ? undefined : await queue.getJob(id);
      if (!job) {
        return { id, index, status: counted ?? 'canceled', metadata: null, expired: true };
      }
      const view = await viewJob(job, { config, store, now: deps.now ?? Date.now, state }).catch(() => undefined);
      if (!view) return { id, index, status: counted ?? 'canceled', metadata: null, expired: true };
      return {
        id, index, status: view.status, metadata: view.metadata,
        ...(view.output ? { output: view.output } : {}),
        ...(view.costUsd !== undefined ? { costUsd: view.costUsd } : {}),
        ...(view.error ? { error: view.error } : {}),
      };
    }),
  );
}
