import type { JobState } from 'bullmq';
import { describe, expect, it } from 'vitest';
import type { JobProgress } from '../../src/jobs/record.js';
import { jobStatus, type JobStatus } from '../../src/queue/job-view.js';

const tried: Pick<JobProgress, 'history'> = { history: [{ attempt: 1, model: 'm', family: 'fast' as const, outcome: 'UPSTREAM_TIMEOUT', latencyMs: 10, at: '2026-01-01T00:00:00Z' }] };
const fresh: Pick<JobProgress, 'history'> = { history: [] };

describe('jobStatus', () => {
  const table: [JobState, Pick<JobProgress, 'history'>, number, JobStatus][] = [
    ['waiting', fresh, 0, 'queued'],
    ['prioritized', fresh, 0, 'queued'],
    ['waiting-children', fresh, 0, 'queued'],
    ['delayed', fresh, 0, 'queued'],
    ['waiting', tried, 0, 'retrying'],
    ['prioritized', tried, 0, 'retrying'],
    ['delayed', tried, 0, 'retrying'],
    ['delayed', fresh, 1, 'retrying'],
    ['prioritized', fresh, 2, 'retrying'],
    ['active', fresh, 0, 'running'],
    ['active', tried, 3, 'running'],
    ['completed', tried, 1, 'succeeded'],
    ['completed', fresh, 0, 'succeeded'],
    ['failed', tried, 5, 'failed'],
    ['failed', fresh, 0, 'failed'],
  ];
  it.each(table)('%s with %j and attemptsMade %i is %s', (state, progress, attemptsMade, expected) => {
    expect(jobStatus(state, progress, { attemptsMade })).toBe(expected);
  });
});
