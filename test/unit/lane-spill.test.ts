/**
 * The spill-over decision (src/lanes/spill.ts) and the shared backlog read (src/queue/backlog.ts).
 */
import { describe, expect, it } from 'vitest';
import { decideShare, decideSpill } from '../../src/lanes/spill.js';
import { createBacklogReader } from '../../src/queue/backlog.js';
import { SharedRead } from '../../src/state/shared-read.js';

describe('sharing decision (the other model first, while the first lane still has room)', () => {
  // Nano Banana 2 known at 150/min, p95 7 s; Pro p95 13 s. Catalogue p95s at 1K: 10 s and 20 s.
  const base = {
    firstRpm: 150, firstP95Ms: 7_000, otherP95Ms: 13_000, typicalFirstP95Ms: 10_000, typicalOtherP95Ms: 20_000,
    concurrency: 64,
  };

  it('shares a backlog that keeps the first model busy, at its known rate, longer than the other model is slower', () => {
    expect(decideShare({ ...base, backlog: 1_000 })).toEqual({ share: true, note: 'first lane in ~400 s (1000 queued at 150/min), other model 6.0 s slower at p95' });
    // 10 queued clear in 4 s < 6 s: Nano Banana 2 first, as the tier says.
    expect(decideShare({ ...base, backlog: 10 }).share).toBe(false);
    // A known rate without latencies: no sharing (a rate in real ms against no latency says nothing).
    expect(decideShare({ ...base, firstP95Ms: null, backlog: 1_000 }).share).toBe(false);
  });

  it('with no quota known yet (a first batch), shares a backlog of more than a round of the worker\'s slots', () => {
    const cold = { ...base, firstRpm: 0 };
    // Measured latencies: 100 jobs on 64 slots at 7 s keep Nano Banana 2 busy at least ~11 s > 6 s.
    expect(decideShare({ ...cold, backlog: 100 })).toEqual({
      share: true, note: 'first model busy at least ~11 s (100 queued on 64 slots at 7.0 s, quota not known yet), other model 6.0 s slower at p95',
    });
    expect(decideShare({ ...cold, backlog: 50 }).share).toBe(false); // ~5.5 s
    // Before any call: the catalogue's ranges (10 s vs 20 s): more than 64 queued shares.
    const first = { ...cold, firstP95Ms: null, otherP95Ms: null };
    expect(decideShare({ ...first, backlog: 65 })).toEqual({
      share: true, note: 'first model busy at least ~10 s (65 queued on 64 slots at 10 s, quota not known yet), other model 10 s slower at p95 (catalogue)',
    });
    expect(decideShare({ ...first, backlog: 64 }).share).toBe(false);
  });
});

describe('spill-over decision', () => {
  // Nano Banana 2 at 150/min (a slot per 400 ms), p95 7 s; Pro p95 13 s: Pro answers 6 s later.
  const base = { waitMs: 400, firstRpm: 150, firstP95Ms: 7_000, otherP95Ms: 13_000 };

  it('spills while the backlog behind it keeps the first lane busy longer than the other model is slower', () => {
    // 100 queued jobs at 150/min: 40 s for the first lane to reach this one, far more than 6 s.
    const d = decideSpill({ ...base, backlog: 100 });
    expect(d.spill).toBe(true);
    expect(d.note).toBe('first lane in ~40 s (100 queued at 150/min), other model 6.0 s slower at p95');
  });

  it('waits for the first model at the end of a backlog, when its slot comes sooner than the slower answer', () => {
    // 10 queued: 0.4 s + 4 s < 6 s: waiting for Nano Banana 2 finishes sooner (and costs half).
    const d = decideSpill({ ...base, backlog: 10 });
    expect(d).toEqual({ spill: false, untilFirstMs: 4_400, note: 'first lane in ~4.4 s (10 queued at 150/min), other model 6.0 s slower at p95' });
    // The boundary: 14 queued = 6.0 s, not more than 6 s: still waits; 15 queued spills.
    expect(decideSpill({ ...base, backlog: 14 }).spill).toBe(false);
    expect(decideSpill({ ...base, backlog: 15 }).spill).toBe(true);
  });

  it('a first lane closed for long (a RetryInfo delay) spills even with nothing queued', () => {
    expect(decideSpill({ ...base, waitMs: 30_000, backlog: 0 }).spill).toBe(true);
  });

  it('an other model that is faster (peak hours) always takes the job', () => {
    expect(decideSpill({ ...base, firstP95Ms: 20_000, backlog: 0, waitMs: 1 }).spill).toBe(true);
  });

  it('spills without figures: no latency measured yet, or a lane with no learned rate', () => {
    expect(decideSpill({ ...base, backlog: 0, otherP95Ms: null })).toEqual({ spill: true, note: 'no latency or rate figures yet' });
    expect(decideSpill({ ...base, backlog: 0, firstP95Ms: null }).spill).toBe(true);
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
