/**
 * From image job views to an experiment's runs and per-variant summaries. Pure functions: the
 * finisher and the API both use them, so a summary means the same everywhere.
 */
import type { JobStatus, JobView } from '../queue/job-view.js';
import type { VariantSummary } from './experiment-queue.js';

/** A run's job no longer exists: removed when cancelled, or past JOB_RETENTION. */
export type RunStatus = JobStatus | 'removed';

export interface RunView {
  jobId: string;
  repeat: number;
  status: RunStatus;
  /** The model id that made the image, or the last one tried; null before any call. */
  model: string | null;
  family: 'fast' | 'pro' | null;
  /** Upstream latency of the call that made the image, ms; null unless succeeded. */
  latencyMs: number | null;
  /** Spent on the run's calls, failed ones included, USD. */
  costUsd: number;
  attempts: number;
  output?: { key: string; url: string; width: number; height: number; mimeType: string };
  error?: { code: string; message: string };
}

const TERMINAL_RUN: readonly RunStatus[] = ['succeeded', 'failed', 'canceled', 'removed'];

export function isTerminalRun(status: RunStatus): boolean {
  return TERMINAL_RUN.includes(status);
}

export function runFromJob(jobId: string, repeat: number, view: JobView | undefined): RunView {
  if (!view) {
    return {
      jobId, repeat, status: 'removed', model: null, family: null, latencyMs: null, costUsd: 0, attempts: 0,
      error: { code: 'NOT_FOUND', message: 'the run\'s job no longer exists (cancelled and removed, or older than JOB_RETENTION)' },
    };
  }
  const lastCall = [...view.history].reverse().find((h) => h.model !== null);
  const made = view.status === 'succeeded' ? [...view.history].reverse().find((h) => h.outcome === 'succeeded') : undefined;
  const run: RunView = {
    jobId,
    repeat,
    status: view.status,
    model: view.route?.model ?? lastCall?.model ?? null,
    family: view.route?.family ?? lastCall?.family ?? null,
    latencyMs: made ? made.latencyMs : null,
    costUsd: roundUsd(view.costUsd ?? 0),
    attempts: view.attempts,
  };
  if (view.output) {
    const { key, url, width, height, mimeType } = view.output;
    run.output = { key, url, width, height, mimeType };
  }
  if (view.error) run.error = { code: view.error.code, message: view.error.message };
  return run;
}

export function summarizeRuns(runs: readonly RunView[]): VariantSummary {
  const count = (...statuses: RunStatus[]) => runs.filter((r) => statuses.includes(r.status)).length;
  const latencies = runs.filter((r) => r.status === 'succeeded' && r.latencyMs !== null).map((r) => r.latencyMs as number);
  return {
    runs: runs.length,
    succeeded: count('succeeded'),
    failed: count('failed'),
    // A removed run was cancelled (or expired): either way it made no image and failed at nothing.
    canceled: count('canceled', 'removed'),
    pending: runs.filter((r) => !isTerminalRun(r.status)).length,
    meanLatencyMs: latencies.length > 0 ? Math.round(latencies.reduce((a, b) => a + b, 0) / latencies.length) : null,
    totalCostUsd: roundUsd(runs.reduce((sum, r) => sum + r.costUsd, 0)),
  };
}

/** Costs are shown to the micro-dollar; floating-point sums would print 0.30000000000000004. */
export function roundUsd(usd: number): number {
  return Math.round(usd * 1e6) / 1e6;
}
