/**
 * The image worker: a BullMQ Worker on the image queue running `processImageJob`, plus graceful shutdown.
 *
 * Shutdown (SIGTERM/SIGINT in workers/image-worker.ts): stop fetching, let in-flight generations finish
 * within SHUTDOWN_GRACE (default 390 s, longer than the 360 s upstream timeout), then abort what is
 * still running and hand those jobs back to the queue for another worker, without consuming an attempt.
 */
import { setMaxListeners } from 'node:events';
import { getHeapStatistics } from 'node:v8';
import { Queue, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { JobResult } from '../jobs/record.js';
import type { TerminalHook } from '../jobs/terminal.js';
import { createLogger, type Logger } from '../logging/logger.js';
import { GeminiClient } from '../providers/gemini/client.js';
import type { ImageGenerator } from '../providers/gemini/types.js';
import { createRedis } from '../queue/connection.js';
import { IMAGE_QUEUE, BACKOFF_TYPE } from '../queue/image-queue.js';
import type { RoutingPolicy } from '../routing/router.js';
import { ModelStateStore } from '../state/model-state.js';
import { HealthStore } from '../health/health-store.js';
import { createS3Store, type ObjectStore } from '../storage/object-store.js';
import { createBatchTerminalHook } from '../batches/accounting.js';
import { startExperimentFinisher } from '../experiments/finisher.js';
import { createInputImageFetcher } from '../net/fetch-input-image.js';
import { createWebhookEventHook } from '../webhooks/outbox.js';
import { clipToDeadline, fullJitterDelay } from './backoff.js';
import { startCancelWatcher, type CancelWatcher } from './cancel.js';
import { createImageJobProcessor } from './process-image-job.js';
import { primaryApiKey } from '../lanes/keys.js';
import { createLaneLimiter, laneIdsFromConfig } from '../lanes/limiter.js';
import { RedisBudgets } from '../budget/budgets.js';
import { createBacklogReader } from '../queue/backlog.js';
import { AnswerGate } from './answer-gate.js';
import { TurnPacer } from './turn-pacer.js';

/** Memory held per in-flight generation while its answer is handled (~5x a 4K image; see the anchors, A4). */
const BYTES_PER_INFLIGHT_JOB = 32 * 1024 * 1024;

/** Default concurrency from memory: half the V8 heap limit divided by the cost of one in-flight 4K answer. */
export function defaultConcurrency(heapLimitBytes = getHeapStatistics().heap_size_limit): number {
  return Math.max(4, Math.min(200, Math.floor((heapLimitBytes * 0.5) / BYTES_PER_INFLIGHT_JOB)));
}

export interface ImageWorkerDeps {
  generator: ImageGenerator;
  store: ObjectStore;
  logger: Logger;
  /** Connection for the Worker (blocking commands); created from config when absent. */
  connection: Redis;
  now: () => number;
  random: () => number;
  policy: RoutingPolicy;
  /** Replaces the production terminal hooks (webhook outbox, batch accounting); tests record with it. */
  terminalHooks: readonly TerminalHook[];
}

export interface RunningImageWorker {
  readonly worker: Worker;
  readonly concurrency: number;
  /** Stop fetching, wait up to `graceMs` (SHUTDOWN_GRACE) for in-flight jobs, then release the rest. */
  close(graceMs?: number): Promise<void>;
}

export function startImageWorker(config: Config, deps: Partial<ImageWorkerDeps> = {}): RunningImageWorker {
  const concurrency = config.WORKER_CONCURRENCY ?? defaultConcurrency();
  const logger = deps.logger ?? createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-worker' });
  const connection = deps.connection ?? createRedis(config, 'worker');
  const stateConnection = createRedis(config, 'worker');
  const store = deps.store ?? createS3Store(config, { maxSockets: concurrency });
  const generator =
    deps.generator ??
    new GeminiClient({
      baseUrl: config.GEMINI_BASE_URL, apiKey: primaryApiKey(config), timeoutMs: config.UPSTREAM_TIMEOUT_MS,
      connections: concurrency, logger,
    });
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;
  const shutdown = new AbortController();
  // Every in-flight job listens on it (and stops listening when it ends): not a leak, so no warning.
  setMaxListeners(0, shutdown.signal);

  const backlogQueue = new Queue(IMAGE_QUEUE, { connection: stateConnection, prefix: config.QUEUE_PREFIX });
  // Late-bound: the cancel watcher needs the Worker, the processor needs the watcher.
  const late: { cancelWatcher?: CancelWatcher } = {};
  const processor = createImageJobProcessor({
    config, generator, store, logger, now, random, policy: deps.policy,
    modelState: new ModelStateStore(stateConnection, config, now),
    // Model health and breakers (HEALTH_*, BREAKER_*): recorded per call, read by the router.
    // Breakers per lane (model, API key) when lanes are on: one key's failures never stop the others.
    health: new HealthStore(stateConnection, config, {}, { snapshotCacheMs: 250, lanesOf: laneIdsFromConfig(config) }),
    shutdownSignal: shutdown.signal,
    terminalHooks: deps.terminalHooks ?? [createWebhookEventHook(config, stateConnection), createBatchTerminalHook(config, stateConnection)],
    fetchInputImage: createInputImageFetcher(config),
    isCanceled: (jobId) => late.cancelWatcher?.isCanceled(jobId) ?? Promise.resolve(false),
    // Shared model lanes: one per (model, API key), learned rate + fleet in-flight cap (LANES_ENABLED).
    lanes: createLaneLimiter(stateConnection, config, { now, random, logger }),
    // Batch maxCostUsd, TENANT_DAILY_BUDGET_USD and spend per family and day (src/budget/budgets.ts).
    budgets: new RedisBudgets(stateConnection, config, { now, logger }),
    // Jobs waiting, shared for 250 ms: whether a standard job spills to the other model (src/lanes/spill.ts).
    backlog: createBacklogReader(backlogQueue, { now }),
    // Up to LANE_SHARE_SLOTS of this worker's slots on Pro for a standard backlog, from its first job (spill.ts).
    sharing: { concurrency, maxSlots: Math.floor(config.LANE_SHARE_SLOTS * concurrency) },
    // At most WORKER_MAX_PENDING_UPLOADS answers read and held until stored, whatever the concurrency.
    answerGate: new AnswerGate(config.WORKER_MAX_PENDING_UPLOADS),
    // A burst of job starts (hundreds fetched at once) runs 2 per event-loop turn, not all in one.
    pacer: new TurnPacer(2),
    // Every lane full: the whole fleet stops taking jobs until the next slot (BullMQ's queue-wide rate limit).
    pauseFetching: (ms) => backlogQueue.rateLimit(ms),
  });

  const worker = new Worker<unknown, JobResult>(IMAGE_QUEUE, processor, {
    connection,
    prefix: config.QUEUE_PREFIX,
    concurrency,
    lockDuration: config.WORKER_LOCK_DURATION_MS,
    stalledInterval: config.WORKER_STALLED_INTERVAL_MS,
    // A job may stall once per deploy or crash without failing; more is a poison job.
    maxStalledCount: 2,
    settings: {
      backoffStrategy: (attemptsMade: number, type?: string, _err?: Error, job?: { data: unknown }) => {
        if (type !== BACKOFF_TYPE) return 0;
        const deadlineIso = (job?.data as { request?: { deadline?: string } } | undefined)?.request?.deadline;
        const delay = fullJitterDelay(attemptsMade, { baseMs: config.BACKOFF_BASE_MS, capMs: config.BACKOFF_CAP_MS }, random);
        return clipToDeadline(delay, now(), deadlineIso ? Date.parse(deadlineIso) : undefined);
      },
    },
  });
  worker.on('error', (err) => logger.error({ err: err.message }, 'worker error'));
  const cancelWatcher = startCancelWatcher(config, { redis: stateConnection, worker });
  late.cancelWatcher = cancelWatcher;
  const finisher = startExperimentFinisher(config, { connection: stateConnection, logger });
  worker.on('failed', (job: Job | undefined, err: Error) => {
    if (job && job.attemptsMade < (job.opts.attempts ?? 1) && !err.name.includes('Unrecoverable')) {
      logger.info({ jobId: job.id, attempt: job.attemptsMade, err: err.message }, 'attempt failed; retrying after backoff');
    }
  });

  logger.info({ concurrency, queue: `${config.QUEUE_PREFIX}:${IMAGE_QUEUE}` }, 'image worker started');

  let closing: Promise<void> | undefined;
  return {
    worker,
    concurrency,
    close(graceMs = config.SHUTDOWN_GRACE) {
      closing ??= (async () => {
        logger.info({ graceMs }, 'shutting down: no new jobs; waiting for in-flight generations');
        const timer = setTimeout(() => {
          logger.warn('shutdown grace over: releasing in-flight jobs to other workers');
          shutdown.abort(new Error('worker shutdown'));
        }, graceMs);
        try {
          await worker.close();
        } finally {
          clearTimeout(timer);
          await cancelWatcher.close();
          await finisher.close();
          await backlogQueue.close();
          await generator.close();
          if (!deps.store) store.destroy();
          await stateConnection.quit().catch(() => {});
          if (!deps.connection) await connection.quit().catch(() => {});
          logger.info('image worker stopped');
        }
      })();
      return closing;
    },
  };
}
