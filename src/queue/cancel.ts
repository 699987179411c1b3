/**
 * Cancelling an image job (`DELETE /v1/jobs/:id`, and per job for `DELETE /v1/batches/:id`).
 *
 * Redis keys (`{p}` = `${QUEUE_PREFIX}:pm`):
 *   `{p}:cancel:{jobId}`  flag "this job is cancelled" (value: ISO time), kept JOB_RETENTION. Every
 *                         worker asks it before any upstream call (worker/cancel.ts isCanceled).
 *   `{p}:cancel-log`      stream of cancelled ids (field `jobId`, trimmed to ~CANCEL_LOG_MAX_LEN): a
 *                         worker whose subscription dropped catches up from it.
 *   channel `{p}:cancel`  PUBLISH jobId: every worker's cancel watcher aborts the job if it holds it.
 *
 * What happens, by the job's state:
 * - waiting, prioritized or delayed: the job is failed at once, without any worker. BullMQ 6 has no
 *   primitive for that (Job.moveToFailed needs the lock of an active job; Job.remove deletes the
 *   record), so a Lua script does what BullMQ's own finish script does, atomically and only if the
 *   job is still waiting: take it out of wait/paused/prioritized/delayed, add it to `failed` with
 *   finishedOn, store the progress record with `canceledAt` and the CANCELED error, and add a
 *   `failed` event to the queue's event stream (QueueEvents, SSE). GET says `canceled` at once and no
 *   worker ever sees the job. The script relies on BullMQ's key layout (the one its removeJob script
 *   uses); the cancel tests fail if an upgrade changes it.
 *   A job with a flow parent is not moved (the parent's bookkeeping lives in BullMQ's finish script):
 *   its progress gets `canceledAt` (GET says `canceled` at once), a delayed one is promoted, and the
 *   next worker ends it through the processor (isCanceled), so BullMQ updates the parent.
 * - active: the flag, then a broadcast; the worker holding the job aborts its signal
 *   (Worker.cancelJob), which aborts the upstream request, and the processor ends the job as CANCELED
 *   without uploading anything. Answered as 'canceling': the job is still running for a moment.
 * - completed or failed (or removed by retention): 'already-finished', nothing changes.
 *
 * Order matters. The flag is set first: any worker that takes the job afterwards sees it before
 * calling upstream, so only a job that was already active can still call, and that one gets the
 * broadcast. The terminal hooks (webhooks, batch accounting) run before the job's failed state is
 * recorded (outbox first, see jobs/terminal.ts); a crash in between leaves a flagged waiting job,
 * which the next worker ends as canceled (running the idempotent hooks again).
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { createHash } from 'node:crypto';
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';
import { readProgress, storedJobDataSchema, type JobProgress } from '../jobs/record.js';
import { runTerminalHooks, type TerminalHook } from '../jobs/terminal.js';
import { createBatchTerminalHook } from '../batches/accounting.js';
import { createWebhookEventHook } from '../webhooks/outbox.js';

/** Approximate length the cancel log is trimmed to; a watcher only needs the last few seconds of it. */
export const CANCEL_LOG_MAX_LEN = 10_000;

export type CancelOutcome = 'canceled' | 'canceling' | 'already-finished';

export interface CancelJobDeps {
  config: Config;
  /** Any connection that runs commands (the API's producer connection). */
  redis: Redis;
  /** The image queue. */
  queue: Queue;
  /** Defaults to the production hooks (webhook outbox, batch accounting) on `redis`. */
  terminalHooks?: readonly TerminalHook[];
  now?: () => number;
}

/** pixelmill's cancellation keys (see the header). */
export function cancelKeys(config: Config) {
  const p = `${config.QUEUE_PREFIX}:pm`;
  return {
    flag: (jobId: string) => `${p}:cancel:${jobId}`,
    log: `${p}:cancel-log`,
    channel: `${p}:cancel`,
  };
}

/** How often the state is re-read when the job moves while we cancel it (a worker took it, a retry). */
const MAX_ROUNDS = 5;

/**
 * Cancel an image job. 'canceled': it will never run again and GET says so now; 'canceling': it is
 * running and its worker was told to abort; 'already-finished': it had succeeded or failed (or was
 * removed by retention), nothing changed.
 */
export async function cancelJob(deps: CancelJobDeps, jobId: string): Promise<CancelOutcome> {
  const { config, redis, queue } = deps;
  const now = deps.now ?? Date.now;
  const keys = cancelKeys(config);
  const hooks = deps.terminalHooks ?? [createWebhookEventHook(config, redis), createBatchTerminalHook(config, redis)];

  const initial = await queue.getJobState(jobId);
  if (initial === 'unknown' || initial === 'completed' || initial === 'failed') return 'already-finished';

  const canceledAt = new Date(now()).toISOString();
  await redis.set(keys.flag(jobId), canceledAt, 'PX', config.JOB_RETENTION, 'NX');

  let hooksRan = false;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const state = await queue.getJobState(jobId);
    if (state === 'active') {
      await announce(redis, config, jobId);
      return 'canceling';
    }
    if (state === 'unknown' || state === 'completed' || state === 'failed') {
      return (await endedCanceled(queue, jobId)) ? 'canceled' : unflag(redis, config, jobId);
    }

    const job = await queue.getJob(jobId);
    if (!job) return unflag(redis, config, jobId);
    const jobKey = queue.toKey(jobId);
    const rawProgress = await redis.hget(jobKey, 'progress');
    const progress: JobProgress = readProgress(rawProgress === null ? undefined : safeJson(rawProgress));
    const error = new PixelmillError('CANCELED', 'the job was cancelled while it waited').toJSON();
    const next: JobProgress = { ...progress, canceledAt: progress.canceledAt ?? canceledAt, error };

    if (!hooksRan) {
      const data = storedJobDataSchema.safeParse(job.data);
      // Data pixelmill cannot read belongs to nobody's batch or webhook: nothing to tell.
      if (data.success) {
        await runTerminalHooks(hooks, { jobId, data: data.data, status: 'canceled', error, costUsd: progress.costUsd, at: canceledAt });
      }
      hooksRan = true;
    }

    const outcome = await takeWaitingJob(redis, queue, config, jobId, rawProgress ?? '', JSON.stringify(next), now());
    switch (outcome) {
      case 'taken':
        return 'canceled';
      case 'marked':
        // A delayed flow child: bring it forward so a worker ends it now rather than at its delay.
        if (state === 'delayed') await job.promote().catch(() => {});
        return 'canceled';
      case 'missing':
        return unflag(redis, config, jobId);
      case 'changed':
      case 'not-waiting':
        continue; // it moved (a worker took it, or a retry was scheduled): look again
    }
  }
  // Still moving after several rounds: the flag is set, so whichever worker runs it next ends it.
  await announce(redis, config, jobId);
  return 'canceling';
}

/** Tell every worker: the one holding the job aborts it; the log lets a reconnecting watcher catch up. */
async function announce(redis: Redis, config: Config, jobId: string): Promise<void> {
  const keys = cancelKeys(config);
  await redis.xadd(keys.log, 'MAXLEN', '~', String(CANCEL_LOG_MAX_LEN), '*', 'jobId', jobId);
  await redis.publish(keys.channel, jobId);
}

/** The job finished before the flag mattered: drop the flag so a later manual retry is not cancelled. */
async function unflag(redis: Redis, config: Config, jobId: string): Promise<'already-finished'> {
  await redis.del(cancelKeys(config).flag(jobId));
  return 'already-finished';
}

async function endedCanceled(queue: Queue, jobId: string): Promise<boolean> {
  const job = await queue.getJob(jobId);
  return job !== undefined && (await job.getState()) === 'failed' && readProgress(job.progress).canceledAt !== undefined;
}

function safeJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

type TakeOutcome = 'taken' | 'marked' | 'missing' | 'changed' | 'not-waiting';

/**
 * Atomically: if the job is still waiting (wait, paused, prioritized or delayed) and its progress is
 * still what we read, record it as failed-and-canceled. A flow child only gets its progress marked.
 */
const TAKE_WAITING_JOB = `
local jobKey = KEYS[1]
if redis.call("EXISTS", jobKey) == 0 then return "missing" end
local current = redis.call("HGET", jobKey, "progress") or ""
if current ~= ARGV[3] then return "changed" end
local jobId = ARGV[1]
local isChild = redis.call("HEXISTS", jobKey, "parentKey") == 1 or redis.call("HEXISTS", jobKey, "parent") == 1
if isChild then
  local waiting = redis.call("ZSCORE", KEYS[5], jobId) or redis.call("ZSCORE", KEYS[4], jobId)
    or redis.call("LPOS", KEYS[2], jobId) or redis.call("LPOS", KEYS[3], jobId)
  if not waiting then return "not-waiting" end
  redis.call("HSET", jobKey, "progress", ARGV[4])
  redis.call("XADD", KEYS[7], "MAXLEN", "~", ARGV[7], "*", "event", "progress", "jobId", jobId, "data", ARGV[4])
  return "marked"
end
local prev
if redis.call("ZREM", KEYS[5], jobId) == 1 then prev = "delayed"
elseif redis.call("ZREM", KEYS[4], jobId) == 1 then prev = "prioritized"
elseif redis.call("LREM", KEYS[2], 1, jobId) == 1 then prev = "waiting"
elseif redis.call("LREM", KEYS[3], 1, jobId) == 1 then prev = "paused"
else return "not-waiting" end
redis.call("HSET", jobKey, "progress", ARGV[4], "failedReason", ARGV[5], "finishedOn", ARGV[2])
redis.call("HDEL", jobKey, "defa")
redis.call("ZADD", KEYS[6], ARGV[2], jobId)
redis.call("XADD", KEYS[7], "MAXLEN", "~", ARGV[7], "*", "event", "progress", "jobId", jobId, "data", ARGV[4])
redis.call("XADD", KEYS[7], "MAXLEN", "~", ARGV[7], "*", "event", "failed", "jobId", jobId, "failedReason", ARGV[5], "prev", prev)
return "taken"
`;
const TAKE_WAITING_JOB_SHA = createHash('sha1').update(TAKE_WAITING_JOB).digest('hex');

async function takeWaitingJob(
  redis: Redis, queue: Queue, config: Config, jobId: string, expectedProgress: string, nextProgress: string, at: number,
): Promise<TakeOutcome> {
  const k = queue.keys;
  const keys = [queue.toKey(jobId), k['wait']!, k['paused']!, k['prioritized']!, k['delayed']!, k['failed']!, k['events']!];
  const args = [jobId, String(at), expectedProgress, nextProgress, 'CANCELED: the job was cancelled', '', String(config.EVENTS_MAX_LEN)];
  let result: unknown;
  try {
    result = await redis.evalsha(TAKE_WAITING_JOB_SHA, keys.length, ...keys, ...args);
  } catch (err) {
    if (!(err instanceof Error) || !err.message.includes('NOSCRIPT')) throw err;
    result = await redis.eval(TAKE_WAITING_JOB, keys.length, ...keys, ...args);
  }
  return result as TakeOutcome;
}
