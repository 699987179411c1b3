/**
 * The experiment finisher: processes an experiment's parent job (a BullMQ flow) once every variant
 * run reached a terminal state. Runs inside image worker processes.
 *
 * BullMQ moves the parent out of `waiting-children` when its last run ends: succeeded, failed or
 * cancelled (runs carry ignoreDependencyOnFailure, so a failure is recorded, not propagated). The
 * finisher then reads every run, stores the per-variant summary as the parent's return value, and
 * queues experiment.completed. The event is queued BEFORE the parent completes (outbox first): a
 * finisher that dies in between leaves the parent to be re-run (stalled), and the event queue
 * dedupes by its deterministic id, so the event is sent once.
 */
import { UnrecoverableError, Worker, type Job, type Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { isPixelmillError } from '../errors/catalogue.js';
import type { Logger } from '../logging/logger.js';
import { createImageQueue } from '../queue/image-queue.js';
import { viewJob, type JobView } from '../queue/job-view.js';
import { createS3Store, type ObjectStore } from '../storage/object-store.js';
import {
  EXPERIMENT_QUEUE, experimentJobDataSchema, type ExperimentJobData, type ExperimentResult,
} from './experiment-queue.js';
import { runFromJob, summarizeRuns } from './summary.js';
import { enqueueExperimentCompleted, type ExperimentCompletedEvent } from './webhook.js';

/** Parents are light (a few hundred small reads); a handful at once is plenty. */
const FINISHER_CONCURRENCY = 4;

export interface RunningFinisher {
  close(): Promise<void>;
}

export interface ExperimentFinisherDeps {
  connection: Redis;
  logger: Logger;
  /** Used to read run views (no object is fetched); created from config when absent. */
  store?: ObjectStore;
  now?: () => number;
  /** Queues the experiment.completed event (the webhook outbox by default); must be idempotent. */
  enqueueCompleted?: (event: ExperimentCompletedEvent) => Promise<void>;
  concurrency?: number;
}

export function startExperimentFinisher(config: Config, deps: ExperimentFinisherDeps): RunningFinisher {
  const { connection, logger } = deps;
  const imageQueue = createImageQueue(config, connection);
  const store = deps.store ?? createS3Store(config, { maxSockets: 1 });
  const processor = createExperimentProcessor(config, {
    imageQueue, store, logger,
    enqueueCompleted: deps.enqueueCompleted ?? ((event) => enqueueExperimentCompleted(config, connection, event)),
    ...(deps.now ? { now: deps.now } : {}),
  });
  const worker = new Worker<unknown, ExperimentResult>(EXPERIMENT_QUEUE, processor, {
    connection,
    prefix: config.QUEUE_PREFIX,
    concurrency: deps.concurrency ?? FINISHER_CONCURRENCY,
  });
  worker.on('error', (err) => logger.error({ err: err.message }, 'experiment finisher error'));
  worker.on('failed', (job, err) => logger.warn({ experimentId: job?.id, err: err.message }, 'experiment finisher attempt failed'));

  let closing: Promise<void> | undefined;
  return {
    close() {
      closing ??= (async () => {
        await worker.close();
        await imageQueue.close();
        if (!deps.store) store.destroy();
      })();
      return closing;
    },
  };
}

export interface ExperimentProcessorDeps {
  imageQueue: Queue;
  store: ObjectStore;
  logger: Logger;
  enqueueCompleted: (event: ExperimentCompletedEvent) => Promise<void>;
  now?: () => number;
}

/** The parent's processor; exported so tests can run it twice on one parent (idempotence). */
export function createExperimentProcessor(config: Config, deps: ExperimentProcessorDeps) {
  const now = deps.now ?? Date.now;
  return async (job: Job): Promise<ExperimentResult> => {
    const parsed = experimentJobDataSchema.safeParse(job.data);
    if (!parsed.success) throw new UnrecoverableError(`experiment ${job.id} holds data pixelmill cannot read`);
    const data: ExperimentJobData = parsed.data;
    const experimentId = job.id ?? '';

    const variants = await Promise.all(
      data.variants.map(async (v) => {
        const runs = await Promise.all(
          v.runIds.map(async (runId, i) => runFromJob(runId, i + 1, await loadRun(config, deps, runId))),
        );
        return { name: v.name, ...summarizeRuns(runs) };
      }),
    );
    const pending = variants.reduce((n, v) => n + v.pending, 0);
    if (pending > 0) {
      // BullMQ only releases the parent when every run ended; report it rather than wait forever.
      deps.logger.warn({ experimentId, pending }, 'experiment finished with runs that are not terminal');
    }
    const result: ExperimentResult = { v: 1, finishedAt: new Date(now()).toISOString(), variants };

    if (data.webhook && wantsCompleted(data.webhook.events)) {
      await deps.enqueueCompleted({
        type: 'experiment.completed', objectId: experimentId, tenant: data.tenant, webhook: data.webhook, at: result.finishedAt,
      });
    }
    deps.logger.info(
      { experimentId, runs: variants.reduce((n, v) => n + v.runs, 0), succeeded: variants.reduce((n, v) => n + v.succeeded, 0) },
      'experiment completed',
    );
    return result;
  };
}

function wantsCompleted(events: readonly string[] | undefined): boolean {
  return events === undefined || events.includes('experiment.completed');
}

async function loadRun(config: Config, deps: ExperimentProcessorDeps, runId: string): Promise<JobView | undefined> {
  const state = await deps.imageQueue.getJobState(runId);
  if (state === 'unknown') return undefined;
  const job = await deps.imageQueue.getJob(runId);
  if (!job) return undefined;
  try {
    return await viewJob(job, { config, store: deps.store, state });
  } catch (err) {
    if (isPixelmillError(err) && err.code === 'NOT_FOUND') return undefined;
    throw err;
  }
}
