import { describe, expect, it } from 'vitest';
import { appendHistory, emptyProgress, MAX_HISTORY, readProgress, type HistoryEntry } from '../../src/jobs/record.js';

const e = (outcome: string, attempt = 1, at = '2026-01-01T00:00:00.000Z'): HistoryEntry =>
  ({ attempt, model: null, family: null, outcome, latencyMs: 0, at, reason: `r-${outcome}` });

describe('job history', () => {
  it('folds consecutive requeues of one attempt into one entry with a count', () => {
    const p = emptyProgress();
    appendHistory(p, e('RATE_LIMITED'));
    for (let i = 0; i < 150; i++) appendHistory(p, e('requeued', 1, `2026-01-01T00:00:${String(i % 60).padStart(2, '0')}.000Z`));
    appendHistory(p, e('succeeded'));
    expect(p.history.map((h) => [h.outcome, h.count])).toEqual([['RATE_LIMITED', undefined], ['requeued', 150], ['succeeded', undefined]]);
    expect(JSON.stringify(p).length).toBeLessThan(1_000);
  });

  it('keeps the newest MAX_HISTORY entries and counts the dropped ones', () => {
    const p = emptyProgress();
    for (let i = 1; i <= MAX_HISTORY + 15; i++) appendHistory(p, e('UPSTREAM_TIMEOUT', i));
    expect(p.history).toHaveLength(MAX_HISTORY);
    expect(p.history[0]!.attempt).toBe(16);
    expect(p.historyDropped).toBe(15);
  });

  it('reads anything that is not a progress record as a fresh one', () => {
    expect(readProgress(42)).toEqual(emptyProgress());
    expect(readProgress({ v: 2 })).toEqual(emptyProgress());
  });
});
