/**
 * The public view of a job (`GET /v1/jobs/:id`, the CLI): BullMQ's state plus pixelmill's progress
 * record and result, in one stable shape. Never contains image bytes or secrets; the output is
 * reachable through a presigned URL that expires after PRESIGN_TTL.
 */
import type { Job, JobState } from 'bullmq';
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';
import {
  jobResultSchema, readProgress, storedJobDataSchema, type ErrorInfo, type HistoryEntry, type JobProgress, type JobResult,
  type RouteInfo, type StoredRequest, type Usage,
} from '../jobs/record.js';
import type { ObjectStore } from '../storage/object-store.js';

export type JobStatus = 'queued' | 'running' | 'retrying' | 'succeeded' | 'failed' | 'canceled';

/** Statuses a job never leaves. */
export const TERMINAL_STATUSES: readonly JobStatus[] = ['succeeded', 'failed', 'canceled'];

export interface JobOutputView {
  key: string;
  /** Presigned GET, valid for PRESIGN_TTL from the moment the view was made. */
  url: string;
  mimeType: string;
  width: number;
  height: number;
  bytes: number;
  sha256: string;
}

export interface JobView {
  id: string;
  status: JobStatus;
  /** The request as stored: input images are always {s3Key} (inline data was moved to the bucket). */
  request: StoredRequest;
  /** request.metadata, repeated at the top level for convenience; null when none was sent. */
  metadata: Record<string, string> | null;
  attempts: number;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  route: RouteInfo | null;
  output?: JobOutputView;
  usage?: Usage;
  /** Spent on this job's upstream calls so far (failed calls included), USD. */
  costUsd?: number;
  /** Set when the image came from another model version than the one asked for. */
  degraded?: string;
  error?: ErrorInfo;
  history: HistoryEntry[];
  /** Set when the job belongs to a batch. */
  batchId?: string;
  /** Set when the job is a variant run of an experiment. */
  experiment?: { id: string; variant: string; repeat: number };
}

export interface JobViewDeps {
  config: Config;
  store: ObjectStore;
  now?: () => number;
  /**
   * The job's state if the caller read it before loading the job (the consistent order: a job read
   * after its state can only be further along). Read with job.getState() when absent.
   */
  state?: JobState | 'unknown';
}

/**
 * Map BullMQ's state to the public status. A job that waits after having been tried (backoff, a
 * 429 requeue, a stall) is `retrying`, not `queued`.
 */
export function jobStatus(state: JobState, progress: Pick<JobProgress, 'history' | 'canceledAt'>, job: Pick<Job, 'attemptsMade'>): JobStatus {
  const tried = progress.history.length > 0 || job.attemptsMade > 0;
  switch (state) {
    case 'active':
      return 'running';
    case 'completed':
      return 'succeeded';
    case 'failed':
      return progress.canceledAt ? 'canceled' : 'failed';
    case 'delayed':
    case 'waiting':
    case 'prioritized':
    case 'waiting-children':
      // A cancelled flow child waits for a worker to end it (queue/cancel.ts): it is canceled already.
      if (progress.canceledAt) return 'canceled';
      return tried ? 'retrying' : 'queued';
  }
}

export async function viewJob(job: Job, deps: JobViewDeps): Promise<JobView> {
  const id = job.id ?? '';
  const data = storedJobDataSchema.safeParse(job.data);
  if (!data.success) {
    throw new PixelmillError('INTERNAL', `job ${id} holds data pixelmill cannot read`, { details: { jobId: id } });
  }
  let state = deps.state ?? (await job.getState());
  if (state === 'unknown') {
    // Removed between lookup and now (retention or a manual clean).
    throw new PixelmillError('NOT_FOUND', `No job ${id}`, { details: { jobId: id } });
  }
  // The job was loaded before it finished (only active jobs finish): show it as it was loaded,
  // rather than "succeeded" without its output.
  if ((state === 'completed' || state === 'failed') && !job.finishedOn) state = 'active';
  const progress = readProgress(job.progress);
  const status = jobStatus(state, progress, job);
  const request = data.data.request;
  const result = status === 'succeeded' ? parseResult(job.returnvalue) : undefined;

  const view: JobView = {
    id,
    status,
    request,
    metadata: request.metadata ?? null,
    attempts: attemptsOf(job, state, progress, result),
    createdAt: data.data.createdAt,
    startedAt: progress.startedAt ?? isoOrNull(job.processedOn),
    finishedAt: state === 'completed' || state === 'failed' ? isoOrNull(job.finishedOn) : null,
    route: progress.route ?? (result ? { family: result.family, model: result.model, reason: result.routingReason } : null),
    history: progress.history,
    ...(data.data.batchId ? { batchId: data.data.batchId } : {}),
    ...(data.data.experiment ? { experiment: data.data.experiment } : {}),
  };

  if (result) {
    view.output = {
      key: result.key,
      url: await deps.store.presignGet(result.key, deps.config.PRESIGN_TTL),
      mimeType: result.mimeType,
      width: result.width,
      height: result.height,
      bytes: result.bytes,
      sha256: result.sha256,
    };
    view.usage = result.usage;
    if (result.degraded !== undefined) view.degraded = result.degraded;
  }
  if (result || progress.history.length > 0 || progress.costUsd > 0) {
    view.costUsd = result ? Math.max(result.totalCostUsd, progress.costUsd) : progress.costUsd;
  }
  if (status === 'failed') {
    view.error = progress.error ?? { code: 'INTERNAL', message: job.failedReason || 'the job failed without a reason', retryable: false };
  }
  if (status === 'canceled') {
    view.error = progress.error?.code === 'CANCELED' ? progress.error : new PixelmillError('CANCELED', 'the job was cancelled').toJSON();
  }
  return view;
}

function parseResult(raw: unknown): JobResult | undefined {
  const parsed = jobResultSchema.safeParse(raw);
  return parsed.success ? parsed.data : undefined;
}

/** Attempts that consumed the budget, counting the one running now. */
function attemptsOf(job: Job, state: JobState, progress: JobProgress, result: JobResult | undefined): number {
  if (result) return result.attempts;
  const fromQueue = job.attemptsMade + (state === 'active' ? 1 : 0);
  const fromHistory = progress.history.reduce((max, h) => Math.max(max, h.attempt), 0);
  return Math.max(fromQueue, fromHistory);
}

function isoOrNull(ms: number | undefined): string | null {
  return typeof ms === 'number' && ms > 0 ? new Date(ms).toISOString() : null;
}
