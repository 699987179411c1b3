/**
 * The spill-over decision (src/lanes/spill.ts) and the shared backlog read (src/queue/backlog.ts).
 */
import { describe, expect, it } from 'vitest';
import { decideShare, decideSpill } from '../../src/lanes/spill.js';
import { createBacklogReader } from '../../src/queue/backlog.js';
import { SharedRead } from '../../src/state/shared-read.js';

describe('sharing decision (the other model first, while the first lane still has room)', () => {
  const base = { firstRpm: 150, firstP50Ms: 7_000, otherP50Ms: 13_000 };

  it('shares a backlog that keeps the first model busy longer than the other model is slower', () => {
    expect(decideShare({ ...base, backlog: 1_000 })).toEqual({ share: true, note: 'first lane in ~400 s (1000 queued at 150/min), other model 6.0 s slower at p50' });
    // 10 queued clear in 4 s < 6 s: Nano Banana 2 first, as the tier says.
    expect(decideShare({ ...base, backlog: 10 }).share).toBe(false);
  });

  it('never shares without the figures: an unknown quota or no latencies yet keeps a small batch off Pro prices', () => {
    expect(decideShare({ ...base, firstRpm: 0, backlog: 1_000 }).share).toBe(false);
    expect(decideShare({ ...base, firstP50Ms: null, backlog: 1_000 }).share).toBe(false);
    expect(decideShare({ ...base, otherP50Ms: null, backlog: 1_000 }).share).toBe(false);
  });
});

describe('spill-over decision', () => {
  // Nano Banana 2 at 150/min (a slot per 400 ms), p50 7 s; Pro p50 13 s: Pro answers 6 s later.
  const base = { waitMs: 400, firstRpm: 150, firstP50Ms: 7_000, otherP50Ms: 13_000 };

  it('spills while the backlog ahead takes the first lane longer than the other model is slower', () => {
    // 100 queued jobs at 150/min: 40 s for the first lane to reach this one, far more than 6 s.
    const d = decideSpill({ ...base, backlog: 100 });
    expect(d.spill).toBe(true);
    expect(d.note).toBe('first lane in ~40 s (100 queued at 150/min), other model 6.0 s slower at p50');
  });

  it('waits for the first model at the end of a backlog, when its slot comes sooner than the slower answer', () => {
    // 10 queued: 0.4 s + 4 s < 6 s: waiting for Nano Banana 2 finishes sooner (and costs half).
    const d = decideSpill({ ...base, backlog: 10 });
    expect(d).toEqual({ spill: false, untilFirstMs: 4_400, note: 'first lane in ~4.4 s (10 queued at 150/min), other model 6.0 s slower at p50' });
    // The boundary: 14 queued = 6.0 s, not more than 6 s: still waits; 15 queued spills.
    expect(decideSpill({ ...base, backlog: 14 }).spill).toBe(false);
    expect(decideSpill({ ...base, backlog: 15 }).spill).toBe(true);
  });

  it('a first lane closed for long (a RetryInfo delay) spills even with nothing queued', () => {
    expect(decideSpill({ ...base, waitMs: 30_000, backlog: 0 }).spill).toBe(true);
  });

  it('an other model that is faster (peak hours) always takes the job', () => {
    expect(decideSpill({ ...base, firstP50Ms: 20_000, backlog: 0, waitMs: 1 }).spill).toBe(true);
  });

  it('spills without figures: no latency measured yet, or a lane with no learned rate', () => {
    expect(decideSpill({ ...base, backlog: 0, otherP50Ms: null })).toEqual({ spill: true, note: 'no latency or rate figures yet' });
    expect(decideSpill({ ...base, backlog: 0, firstP50Ms: null }).spill).toBe(true);
    expect(decideSpill({ ...base, backlog: 0, firstRpm: 0 }).spill).toBe(true);
  });
});

describe('backlog reader', () => {
  it('sums waiting, prioritized and delayed jobs, one read shared within cacheMs, a failed read not kept', async () => {
    const clock = { t: 1_000 };
    let reads = 0;
    let fail = false;
    const queue = {
      getJobCounts: async (...types: string[]) => {
        reads += 1;
        if (fail) throw new Error('redis down');
        expect(types).toEqual(['waiting', 'prioritized', 'delayed']);
        return { waiting: 2, prioritized: 30, delayed: 5 };
      },
    };
    const backlog = createBacklogReader(queue, { cacheMs: 250, now: () => clock.t });
    expect(await Promise.all([backlog(), backlog(), backlog()])).toEqual([37, 37, 37]);
    expect(reads).toBe(1);
    clock.t += 249;
    await backlog();
    expect(reads).toBe(1);
    clock.t += 1;
    fail = true;
    await expect(backlog()).rejects.toThrow('redis down');
    fail = false;
    expect(await backlog()).toBe(37);
    expect(reads).toBe(3);
  });
});

describe('SharedRead (the one shared-read mechanism of the backlog, health snapshots and lane rates)', () => {
  it('shares per key, honours the caller\'s clock, reads every time at 0 ms, and forgets on demand', async () => {
    let reads = 0;
    const read = async () => ++reads;
    const shared = new SharedRead<number>(100, () => 0);
    expect(await Promise.all([shared.get('a', read), shared.get('a', read), shared.get('b', read)])).toEqual([1, 1, 2]);
    expect(await shared.get('a', read, 99)).toBe(1);
    expect(await shared.get('a', read, 100)).toBe(3);
    shared.forget();
    expect(await shared.get('a', read, 100)).toBe(4);
    const always = new SharedRead<number>(0);
    await always.get('a', read);
    expect(await always.get('a', read)).toBe(6);
  });
});
