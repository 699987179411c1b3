/**
 * Cancellation seen from a worker: whether a job was cancelled while it waited, and a subscriber that
 * aborts an active job's upstream call on whichever worker holds it (broadcast through Redis).
 *
 * Keys and channel: see queue/cancel.ts (`{p}:cancel:{jobId}` flag, `{p}:cancel-log` stream,
 * channel `{p}:cancel`).
 *
 * - isCanceled(jobId): the flag exists. The processor asks before any upstream call, so a job
 *   cancelled while it waited, or while its worker was restarting, ends as CANCELED on its next start.
 * - The watcher SUBSCRIBEs on a dedicated connection (a subscribed connection runs nothing else) and
 *   calls `worker.cancelJob(id)` for every id published: BullMQ aborts the processor's signal if this
 *   worker holds the job, and does nothing otherwise. Pub/sub is fire-and-forget, so the watcher also
 *   reads the cancel log (a Redis stream, ids assigned by Redis so no clock matters) from where it
 *   last was, every `sweepMs` and whenever the subscription comes back after a disconnect.
 */
import type { Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { cancelKeys } from '../queue/cancel.js';

export interface CancelWatcher {
  isCanceled(jobId: string): Promise<boolean>;
  close(): Promise<void>;
}

export interface CancelWatcherOptions {
  /** How often the cancel log is read as a safety net for lost broadcasts (ms). */
  sweepMs?: number;
  /** Told about failures of the subscription or the sweep (they are retried, never thrown). */
  onError?: (err: unknown) => void;
}

const DEFAULT_SWEEP_MS = 5_000;
/** Entries read per sweep round; more are read in the next round. */
const SWEEP_BATCH = 500;
const CANCEL_REASON = 'canceled via the API';

export function startCancelWatcher(config: Config, deps: { redis: Redis; worker: Worker }, opts: CancelWatcherOptions = {}): CancelWatcher {
  const { redis, worker } = deps;
  const keys = cancelKeys(config);
  const onError = opts.onError ?? (() => {});
  const abort = (jobId: string) => {
    worker.cancelJob(jobId, CANCEL_REASON);
  };

  // Where the log was when we started: earlier cancels concern jobs that isCanceled() catches anyway.
  let lastLogId: Promise<string> = redis
    .xrevrange(keys.log, '+', '-', 'COUNT', 1)
    .then((entries) => entries[0]?.[0] ?? '0-0')
    .catch((err: unknown) => {
      onError(err);
      return '0-0';
    });

  let sweeping: Promise<void> | undefined;
  let closed = false;
  const sweep = (): Promise<void> => {
    sweeping ??= (async () => {
      try {
        let from = await lastLogId;
        for (;;) {
          const entries = await redis.xrange(keys.log, `(${from}`, '+', 'COUNT', SWEEP_BATCH);
          for (const [id, fields] of entries) {
            const at = fields.indexOf('jobId');
            if (at >= 0 && fields[at + 1]) abort(fields[at + 1]!);
            from = id;
          }
          lastLogId = Promise.resolve(from);
          if (entries.length < SWEEP_BATCH || closed) break;
        }
      } catch (err) {
        onError(err);
      } finally {
        sweeping = undefined;
      }
    })();
    return sweeping;
  };

  const subscriber = redis.duplicate();
  subscriber.on('error', onError);
  subscriber.on('message', (channel: string, jobId: string) => {
    if (channel === keys.channel) abort(jobId);
  });
  let subscribedOnce = false;
  // ioredis resubscribes by itself after a reconnect; what was published meanwhile is in the log.
  subscriber.on('ready', () => {
    if (subscribedOnce) void sweep();
  });
  subscriber.subscribe(keys.channel).then(
    () => {
      subscribedOnce = true;
    },
    (err: unknown) => onError(err),
  );

  const timer = setInterval(() => void sweep(), opts.sweepMs ?? DEFAULT_SWEEP_MS);
  timer.unref();

  return {
    async isCanceled(jobId) {
      return (await redis.exists(keys.flag(jobId))) === 1;
    },
    async close() {
      closed = true;
      clearInterval(timer);
      await sweeping;
      await subscriber.quit().catch(() => subscriber.disconnect());
    },
  };
}
