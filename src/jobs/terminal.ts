/**
 * Terminal hooks: what must happen when a job reaches its final state (a webhook event, batch
 * accounting, an experiment's progress).
 *
 * They run BEFORE the state is recorded (outbox first): the worker calls them before it returns the
 * result or fails the job for good, and the API calls them when it cancels a queued job. A worker that
 * dies in between re-runs the job later and calls them again, so every hook must be idempotent (add
 * follow-up jobs with deterministic ids, update counters with compare-and-set). A hook that throws
 * makes the attempt fail and retry, so nothing is lost.
 */
import type { ErrorInfo, JobResult, StoredJobData } from './record.js';

export type TerminalStatus = 'succeeded' | 'failed' | 'canceled';

export interface TerminalEvent {
  jobId: string;
  data: StoredJobData;
  status: TerminalStatus;
  result?: JobResult;
  error?: ErrorInfo;
  /** Spent on the job's calls, USD. */
  costUsd: number;
  /** ISO time the job ended. */
  at: string;
}

export type TerminalHook = (event: TerminalEvent) => Promise<void>;

/** Run every hook; the first failure fails the whole step (and so retries it). */
export async function runTerminalHooks(hooks: readonly TerminalHook[], event: TerminalEvent): Promise<void> {
  for (const hook of hooks) await hook(event);
}
