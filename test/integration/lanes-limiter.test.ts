/**
 * The shared lane limiter against the real redis-server, with an injected clock: GCRA admission,
 * AIMD learning, the fleet-wide in-flight cap, per-lane closures (per-day quota) and key rotation.
 */
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { geminiApiKeys, keyId } from '../../src/lanes/keys.js';
import { LaneLimiter, laneOptionsFromConfig, type AcquireAnswer, type LaneLease, type LaneOptions } from '../../src/lanes/limiter.js';
import { nextMidnight } from '../../src/state/model-state.js';
import { testConfig } from '../support/stack.js';

const MODEL = 'gemini-3.1-flash-image';
const PRO = 'gemini-3-pro-image';
const KEY_A = 'key-aaaaaaaaaaaaaaaa';
const KEY_B = 'key-bbbbbbbbbbbbbbbb';

const connections: Redis[] = [];
afterAll(async () => {
  await Promise.all(connections.map((c) => c.quit()));
});

/** A limiter on its own connection (a "worker"), sharing the prefix and the clock of `env`. */
function limiterFor(env: { prefix: string; clock: { t: number } }, overrides: Partial<LaneOptions> = {}): LaneLimiter {
  const config = testConfig({ GEMINI_API_KEY: KEY_A });
  const redis = new Redis(config.REDIS_URL);
  connections.push(redis);
  const options: LaneOptions = {
    ...laneOptionsFromConfig(config), ceilingRpm: { fast: undefined, pro: undefined }, initialRpm: 60, burst: 1, ...overrides,
  };
  return new LaneLimiter(redis, env.prefix, options, { now: () => env.clock.t, sleep: async () => {}, random: () => 0 });
}

function freshEnv() {
  return { prefix: testConfig().QUEUE_PREFIX, clock: { t: Date.parse('2026-03-02T18:00:00Z') } };
}

function admitted(a: AcquireAnswer): LaneLease {
  if (a.kind !== 'admitted') throw new Error(`expected admission, got ${JSON.stringify(a)}`);
  return a.lease;
}

/** A call on MODEL's lane as soon as it has a slot: the clock moves to the slot when the lane refuses. */
async function nextSlotCall(lim: LaneLimiter, env: { clock: { t: number } }): Promise<LaneLease> {
  const a = await lim.tryAcquire(MODEL);
  if (a.kind !== 'refused') return admitted(a);
  env.clock.t += a.waitMs;
  return admitted(await lim.tryAcquire(MODEL));
}

describe('lane limiter: GCRA admission', () => {
  it('admits at its rate and refuses beyond, answering the wait', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 60, burst: 1 });
    admitted(await lim.tryAcquire(MODEL));
    const refused = await lim.tryAcquire(MODEL);
    expect(refused).toMatchObject({ kind: 'refused', why: 'rate', waitMs: 1000, rpm: 60 });
    env.clock.t += 400;
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', waitMs: 600 });
    env.clock.t += 600;
    admitted(await lim.tryAcquire(MODEL));
    // Another model is another lane: not held back by this one.
    admitted(await lim.tryAcquire(PRO));
  });

  it('lets a burst through after an idle spell, then paces', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 120, burst: 3 });
    for (let i = 0; i < 3; i++) admitted(await lim.tryAcquire(MODEL));
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'rate', waitMs: 500 });
  });

  it('acquire() sleeps short waits in-process and hands long ones back with the reason', async () => {
    const env = freshEnv();
    const slept: number[] = [];
    const config = testConfig({ GEMINI_API_KEY: KEY_A });
    const redis = new Redis(config.REDIS_URL);
    connections.push(redis);
    const lim = new LaneLimiter(redis, env.prefix, { ...laneOptionsFromConfig(config), initialRpm: 600, burst: 1, maxHoldMs: 250 }, {
      now: () => env.clock.t, random: () => 0,
      sleep: async (ms) => {
        slept.push(ms);
        env.clock.t += ms;
      },
    });
    expect((await lim.acquire(MODEL, 'job1')).kind).toBe('go');
    const second = await lim.acquire(MODEL, 'job2');
    expect(second.kind).toBe('go');
    expect(slept).toEqual([100]);

    const slow = limiterFor(env, { initialRpm: 6, burst: 1 });
    expect((await slow.acquire(PRO, 'job3')).kind).toBe('go');
    const gate = await slow.acquire(PRO, 'job4');
    expect(gate).toMatchObject({ kind: 'wait', waitMs: 10_000, untilMs: env.clock.t + 10_000 });
    expect(gate.kind === 'wait' && gate.reason).toBe(`lane ${PRO} full (rate), next slot in 10000 ms`);
  });
});

describe('lane limiter: the waiting line of a lane full for rate', () => {
  it('spaces the come-backs by the interval in queue order; a higher priority ranks first; admitted or lapsed jobs leave the line', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 6, burst: 1, maxHoldMs: 0 }); // a slot every 10 s
    expect((await lim.acquire(MODEL, 'first')).kind).toBe('go');
    const refusal = async (owner: string) => {
      const gate = await lim.acquire(MODEL, owner);
      if (gate.kind !== 'wait') throw new Error(`expected a wait, got ${gate.kind}`);
      expect(gate).toMatchObject({ why: 'rate', intervalMs: 10_000, untilMs: env.clock.t + gate.waitMs }); // random() = 0: no jitter
      return gate;
    };
    const slot = env.clock.t + 10_000;
    const spacing = 9_000; // 0.9 of the interval (LINE_SPACING)
    // Three priority 5 jobs (queue order 800001..), refused together: their turns are 0, 1 and 2 spacings after the slot.
    const p5 = [];
    for (const [owner, order] of [['job-a', 800_001], ['job-b', 800_002], ['job-c', 800_003]] as const) {
      p5.push(await lim.comeBackAt(MODEL, owner, order, await refusal(owner)));
    }
    expect(p5).toEqual([slot, slot + spacing, slot + 2 * spacing]);
    // A priority 1 job refused later ranks before them all: it comes back for the next slot.
    expect(await lim.comeBackAt(MODEL, 'job-p1', 1, await refusal('job-p1'))).toBe(slot);
    // Asking again keeps the job's place (behind job-p1 now).
    expect(await lim.comeBackAt(MODEL, 'job-c', 800_003, await refusal('job-c'))).toBe(slot + 3 * spacing);
    // job-p1 is admitted at the slot and leaves the line: a newcomer ranks behind a, b and c only.
    env.clock.t = slot;
    expect((await lim.acquire(MODEL, 'job-p1')).kind).toBe('go');
    const f = await refusal('job-f');
    expect(await lim.comeBackAt(MODEL, 'job-f', 800_004, f)).toBe(f.slotAt + 3 * spacing);
    // Once the come-back times and the grace (2 intervals) pass, the entries lapse: a new job is first in line.
    env.clock.t = f.slotAt + 3 * spacing + 20_001;
    expect((await lim.acquire(MODEL, 'job-d')).kind).toBe('go'); // the lane was idle meanwhile
    const late = await refusal('job-e');
    expect(await lim.comeBackAt(MODEL, 'job-e', 800_009, late)).toBe(late.slotAt);
  });
});

describe('lane limiter: AIMD', () => {
  it('raises the rate additively while calls succeed at the limit, cuts it on 429, within ceiling and floor', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 10, stepRpm: 2, decreaseFactor: 0.5, minRpm: 3, ceilingRpm: { fast: 30, pro: undefined }, burst: 1 });
    // The fast family has a ceiling (30): a known quota starts at it.
    const first = admitted(await lim.tryAcquire(MODEL));
    expect(first.rpm).toBe(30);
    // Pro has none: it starts at initialRpm and learns. Saturate it (a refusal marks the lane busy).
    const leases = [admitted(await lim.tryAcquire(PRO))];
    expect((await lim.tryAcquire(PRO)).kind).toBe('refused');
    for (let i = 0; i < 4; i++) {
      env.clock.t += 6_000;
      leases.push(admitted(await lim.tryAcquire(PRO)));
    }
    let rpm = 0;
    for (const l of leases) rpm = await lim.settle(l, 'succeeded');
    expect(rpm).toBe(10 + 5 * 2);

    // A 429 halves it; a second 429 to a call sent before the cut does not cut again.
    env.clock.t += 10_000;
    const before = admitted(await lim.tryAcquire(PRO));
    env.clock.t += 6_000;
    const cutter = admitted(await lim.tryAcquire(PRO));
    expect(await lim.settle(cutter, 'rate_limited')).toBe(10);
    expect(await lim.settle(before, 'rate_limited')).toBe(10);

    // Floor: 429s on fresh calls never push it below minRpm.
    for (let i = 0; i < 5; i++) {
      env.clock.t += 30_000;
      rpm = await lim.settle(admitted(await lim.tryAcquire(PRO)), 'rate_limited');
    }
    expect(rpm).toBe(3);

    // Ceiling: successes at the limit never raise the fast lane above MODEL_FAST_RPM. A known quota
    // (the ceiling) is also a bucket of one quota period's calls: 30 go at once, then it paces.
    for (let i = 0; i < 30; i++) admitted(await lim.tryAcquire(MODEL));
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'rate', waitMs: 2_000 });
    for (let i = 0; i < 5; i++) rpm = await lim.settle(first, 'succeeded');
    expect(rpm).toBe(30);
  });

  it('learn only (no ceiling, no initial rate): unpaced until the first 429, which sets the rate from the dispatch rate', async () => {
    const env = freshEnv();
    env.clock.t = Date.parse('2026-03-02T18:00:30Z');
    const lim = limiterFor(env, { initialRpm: 0, decreaseFactor: 0.5, minRpm: 1, stepRpm: 1 });
    const leases: LaneLease[] = [];
    for (let i = 0; i < 12; i++) leases.push(admitted(await lim.tryAcquire(MODEL)));
    expect((await lim.view([MODEL]))[0]!.rpm).toBeNull();
    expect(await lim.settle(leases[0]!, 'succeeded')).toBe(0);
    // 12 calls dispatched this minute: the first 429 paces the lane at half that.
    expect(await lim.settle(leases[1]!, 'rate_limited')).toBe(6);
    expect((await lim.view([MODEL]))[0]!.rpm).toBe(6);
    // The provider's bucket is empty at a 429: the next slot is one interval (10 s) away.
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'rate', waitMs: 10_000 });
    env.clock.t += 10_000;
    admitted(await lim.tryAcquire(MODEL));
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'rate' });
  });

  it('a 429 that announces its quota (quotaValue) sets the rate to it, and the schedule to an empty bucket', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 0, decreaseFactor: 0.5, minRpm: 1, stepRpm: 1, burst: 5 });
    const leases: LaneLease[] = [];
    for (let i = 0; i < 40; i++) leases.push(admitted(await lim.tryAcquire(MODEL)));
    env.clock.t += 50;
    // 40 calls went out unpaced; the upstream says its quota is 150 per minute: not 40 × 0.5.
    expect(await lim.settle(leases[0]!, 'rate_limited', 150)).toBe(150);
    // No burst right after a 429, though LANE_BURST is 5: the next slot is 400 ms away.
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'rate', waitMs: 400, rpm: 150 });
    // The other 429s of that unpaced round (calls sent before the rate was set) change nothing.
    for (const l of leases.slice(1, 10)) expect(await lim.settle(l, 'rate_limited', 150)).toBe(150);
  });

  it('an announced quota is a fresh ceiling: no increase past it, no cut for one early call, a cut for a second, a probe after a quiet window', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 0, decreaseFactor: 0.5, minRpm: 1, stepRpm: 10, burst: 1 });
    expect(await lim.settle(admitted(await lim.tryAcquire(MODEL)), 'rate_limited', 60)).toBe(60);
    // Saturated (refused for rate), calls succeed: the rate stays at the announced 60, not 60 + 10 per success.
    const callAt = () => nextSlotCall(lim, env);
    for (let i = 0; i < 3; i++) expect(await lim.settle(await callAt(), 'succeeded')).toBe(60);
    // One 429 at the announced rate within a window: a call that arrived early; the rate stays.
    expect(await lim.settle(await callAt(), 'rate_limited', 60)).toBe(60);
    // A second one in the same window: someone else shares the quota; the rate is cut.
    expect(await lim.settle(await callAt(), 'rate_limited', 60)).toBe(30);
    // It climbs back to the announced quota and no further...
    for (let i = 0; i < 5; i++) await lim.settle(await callAt(), 'succeeded');
    expect((await lim.view([MODEL]))[0]!.rpm).toBe(60);
    // ...until a window passes without a 429: then it probes above it (quotas rise after peak hours).
    env.clock.t += 61_000;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(70);
    // A lower quota announced (peak hours) applies at once, without a multiplicative cut below it.
    expect(await lim.settle(await callAt(), 'rate_limited', 18)).toBe(18);
  });

  /** A lane that learned 150 from a 429, then (peak hours) 45 a second later; the clock at the drop. */
  async function droppedLane() {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 0, decreaseFactor: 0.5, minRpm: 1, stepRpm: 1, burst: 1 });
    expect(await lim.settle(admitted(await lim.tryAcquire(MODEL)), 'rate_limited', 150)).toBe(150);
    const callAt = () => nextSlotCall(lim, env);
    env.clock.t += 1_000;
    const dropAt = env.clock.t;
    // The rate follows the drop at once (a slot every 1333 ms).
    expect(await lim.settle(await callAt(), 'rate_limited', 45)).toBe(45);
    return { env, lim, callAt, dropAt };
  }

  it('after a drop in the announced quota, probes for the earlier one with one call, spaced by an eighth of the drop\'s age; once back, the saved calls go at once', async () => {
    const { env, lim, callAt, dropAt } = await droppedLane();
    // Within a quarter window (15 s) of the last 429, successes leave it at 45.
    while (env.clock.t < dropAt + 14_000) expect(await lim.settle(await callAt(), 'succeeded')).toBe(45);
    // After it, a success opens one probe slot beyond the pace: a call is admitted at once.
    env.clock.t = dropAt + 15_000;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(45);
    const probe = await lim.tryAcquire(MODEL);
    expect(probe.kind).toBe('admitted');
    // The quota still being 45, the probe is answered 429: one wasted call, the rate stays.
    expect(await lim.settle(admitted(probe), 'rate_limited', 45)).toBe(45);
    const lastLimitedAt = env.clock.t;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(45);
    // The peak is over: the next probe call gets no 429, and once two slots pass without one the
    // lane returns to the earlier quota.
    env.clock.t = dropAt + 40_000;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(45);
    const lucky = admitted(await lim.tryAcquire(MODEL));
    const luckyAt = env.clock.t;
    env.clock.t += 2_700;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(150);
    // The quota came back between the probe that failed (15 s) and the lucky one (40 s): from the
    // midpoint, the provider saved 150 - 45 per minute that the lane did not use. They go out at once,
    // but only after the earlier rate has held for 2 s (window / 30) without a 429.
    const saved = Math.floor(((150 - 45) * (env.clock.t - (lastLimitedAt + luckyAt) / 2)) / 60_000);
    expect(saved).toBeGreaterThan(20);
    const burst = async (): Promise<number> => {
      let atOnce = 0;
      while ((await lim.tryAcquire(MODEL)).kind === 'admitted') atOnce++;
      return atOnce;
    };
    await burst(); // what the lane's own bucket refilled while the test's clock jumped
    env.clock.t += 2_000;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(150);
    // The saved calls, plus the 2 s of refill at 150/min (5 calls) less the one just made.
    const atOnce = await burst();
    expect(atOnce).toBeGreaterThanOrEqual(saved);
    expect(atOnce).toBeLessThanOrEqual(saved + 4);
    expect(await lim.settle(lucky, 'succeeded')).toBe(150);
    for (let i = 0; i < 3; i++) expect(await lim.settle(await callAt(), 'succeeded')).toBe(150);
  });

  it('after a quiet window, a lane that has heard a quota climbs by a tenth per success, and the next 429 names the quota again', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 0, decreaseFactor: 0.5, minRpm: 1, stepRpm: 1, burst: 1 });
    // First met at peak hours: 45 announced, never the off-peak quota.
    expect(await lim.settle(admitted(await lim.tryAcquire(MODEL)), 'rate_limited', 45)).toBe(45);
    const callAt = () => nextSlotCall(lim, env);
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(45); // fresh: no climb past it
    env.clock.t += 61_000;
    // Busy again (refused for rate), a window later: +10 % per success, not +1 rpm.
    await lim.tryAcquire(MODEL);
    await lim.tryAcquire(MODEL);
    expect(await lim.settle(await callAt(), 'succeeded')).toBeCloseTo(49.5, 6);
    expect(await lim.settle(await callAt(), 'succeeded')).toBeCloseTo(54.45, 6);
    // The peak is over (150 now): a dozen more successes pass it...
    let rpm = 54.45;
    for (let i = 0; i < 12 && rpm <= 150; i++) rpm = await lim.settle(await callAt(), 'succeeded');
    expect(rpm).toBeGreaterThan(150);
    // ...and the 429 for overshooting names the quota: the rate is set to it, not halved.
    expect(await lim.settle(await callAt(), 'rate_limited', 150)).toBe(150);
  });

  it('a probe that got through by luck (a 429 before the recovery held) costs no burst', async () => {
    const { env, lim, callAt } = await droppedLane();
    env.clock.t += 40_000;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(45);
    const lucky = admitted(await lim.tryAcquire(MODEL));
    env.clock.t += 2_700;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(150);
    // Still 45 after all: the earlier rate draws a 429 at once, and the saved calls are called off.
    expect(await lim.settle(lucky, 'rate_limited', 45)).toBe(45);
    // 3 s later (past the 2 s a recovery must hold): only what 3 s refill at 45/min, not ~39 saved calls.
    env.clock.t += 3_000;
    expect(await lim.settle(await callAt(), 'succeeded')).toBe(45);
    let atOnce = 0;
    while ((await lim.tryAcquire(MODEL)).kind === 'admitted') atOnce++;
    expect(atOnce).toBeLessThanOrEqual(2);
  });

  it('a lane whose quota is known lets one quota period of calls through after an idle spell, as the provider does', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 0, burst: 2 });
    expect(await lim.settle(admitted(await lim.tryAcquire(MODEL)), 'rate_limited', 20)).toBe(20);
    // Right after the 429 the bucket is empty: one slot every 3 s.
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', waitMs: 3_000 });
    // A minute later it is full again: 20 calls at once (not LANE_BURST's 2), then paced.
    env.clock.t += 60_000;
    for (let i = 0; i < 20; i++) admitted(await lim.tryAcquire(MODEL));
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'rate', waitMs: 3_000 });
  });

  it('an announced quota counts per LANE_RATE_WINDOW (the quota period): 10 per 4 s is 150 per minute', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 0, rateWindowMs: 4_000 });
    expect(await lim.settle(admitted(await lim.tryAcquire(MODEL)), 'rate_limited', 10)).toBe(150);
  });

  it('the first 429 counts calls per LANE_RATE_WINDOW (the quota period), as a rate per minute', async () => {
    const env = freshEnv();
    // A 4 s window: 12 calls let through within one window = 12 per 4 s = 180 per minute.
    env.clock.t = Date.parse('2026-03-02T18:00:00.500Z');
    const lim = limiterFor(env, { initialRpm: 0, decreaseFactor: 0.5, minRpm: 1, stepRpm: 1, rateWindowMs: 4_000 });
    const leases: LaneLease[] = [];
    for (let i = 0; i < 12; i++) leases.push(admitted(await lim.tryAcquire(MODEL)));
    expect(await lim.settle(leases[0]!, 'rate_limited')).toBe(90);
  });

  it('a rate change rescales the schedule already booked: a raised rate frees slots at once, a cut pushes them out', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 6, stepRpm: 54, burst: 1 });
    // At 6/min (a slot per 10 s) three admissions book the schedule 20 s ahead of now after the first.
    const leases = [admitted(await lim.tryAcquire(MODEL))];
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', waitMs: 10_000 });
    // A success while the limiter binds raises the rate to 60/min (a slot per second): the wait of
    // the booked slot shrinks to a tenth instead of staying 10 s.
    expect(await lim.settle(leases[0]!, 'succeeded')).toBe(60);
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', waitMs: 1_000, rpm: 60 });
    env.clock.t += 1_000;
    const next = admitted(await lim.tryAcquire(MODEL));
    // A 429 halves it: the next slot, a second away at 60/min, is two seconds away at 30/min.
    expect(await lim.settle(next, 'rate_limited')).toBe(30);
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', waitMs: 2_000, rpm: 30 });
  });

  it('an idle lane (not held back by its rate) learns nothing from successes', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { initialRpm: 10, stepRpm: 2 });
    const l = admitted(await lim.tryAcquire(MODEL));
    env.clock.t += 120_000;
    expect(await lim.settle(l, 'succeeded')).toBe(10);
  });
});

describe('lane limiter: in-flight cap across the fleet', () => {
  it('caps calls in flight across two workers, and reclaims the leases of a crashed one', async () => {
    const env = freshEnv();
    const workerA = limiterFor(env, { initialRpm: 6000, burst: 100, maxInflight: 2, leaseTtlMs: 30_000 });
    const workerB = limiterFor(env, { initialRpm: 6000, burst: 100, maxInflight: 2, leaseTtlMs: 30_000 });
    const a1 = admitted(await workerA.tryAcquire(MODEL));
    admitted(await workerB.tryAcquire(MODEL));
    expect(await workerA.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'inflight' });
    expect(await workerB.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'inflight' });
    expect((await workerA.view([MODEL]))[0]).toMatchObject({ inFlight: 2 });

    // A finishes a call: its slot is free for B.
    await workerA.settle(a1, 'succeeded');
    const b2 = admitted(await workerB.tryAcquire(MODEL));
    expect(await workerA.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'inflight' });

    // B crashes holding two leases: they expire and the slots come back.
    void b2;
    env.clock.t += 30_001;
    admitted(await workerA.tryAcquire(MODEL));
    admitted(await workerA.tryAcquire(MODEL));
  });
});

describe('lane limiter: several API keys', () => {
  it('spreads calls over the keys, picking the lane with the earliest free slot', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { apiKeys: [KEY_A, KEY_B], initialRpm: 60, burst: 1 });
    const l1 = admitted(await lim.tryAcquire(MODEL));
    const l2 = admitted(await lim.tryAcquire(MODEL));
    expect(new Set([l1.apiKey, l2.apiKey])).toEqual(new Set([KEY_A, KEY_B]));
    expect(l1.lane).toBe(`${MODEL}@${keyId(l1.apiKey)}`);
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', waitMs: 1000 });
    env.clock.t += 1000;
    admitted(await lim.tryAcquire(MODEL));
  });

  it('closes one lane for its per-day quota until midnight Los Angeles; the other key carries on; reset after midnight', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { apiKeys: [KEY_A, KEY_B], initialRpm: 6000, burst: 100 });
    const onA = admitted(await lim.tryAcquire(MODEL));
    const midnight = nextMidnight(env.clock.t);
    expect(onA.apiKey).toBe(KEY_A);
    // Another lane is open: the model as a whole must not cool down.
    expect(await lim.closeLane(onA, midnight, 'RATE_LIMITED (day)')).toBeLessThanOrEqual(env.clock.t);
    for (let i = 0; i < 5; i++) expect(admitted(await lim.tryAcquire(MODEL)).apiKey).toBe(KEY_B);

    const onB = admitted(await lim.tryAcquire(MODEL));
    expect(await lim.closeLane(onB, midnight, 'RATE_LIMITED (day)')).toBe(midnight);
    expect(await lim.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'closed', waitMs: midnight - env.clock.t });
    const view = await lim.view([MODEL]);
    expect(view.map((v) => v.closedUntil)).toEqual([new Date(midnight).toISOString(), new Date(midnight).toISOString()]);
    // Another model of the same keys is untouched.
    admitted(await lim.tryAcquire(PRO));

    env.clock.t = midnight + 1;
    admitted(await lim.tryAcquire(MODEL));
    admitted(await lim.tryAcquire(MODEL));
  });

  it('takes a refused key out of rotation for every model; no key left → no-keys; never shows a key', async () => {
    const env = freshEnv();
    const lim = limiterFor(env, { apiKeys: [KEY_A, KEY_B], initialRpm: 6000, burst: 100, authDisableTtlMs: 60_000 });
    const onA = admitted(await lim.tryAcquire(MODEL));
    expect(onA.apiKey).toBe(KEY_A);
    expect(await lim.disableKey(onA, 'UPSTREAM_AUTH: API key not valid')).toBe(true);
    for (let i = 0; i < 3; i++) {
      expect(admitted(await lim.tryAcquire(MODEL)).apiKey).toBe(KEY_B);
      expect(admitted(await lim.tryAcquire(PRO)).apiKey).toBe(KEY_B);
    }
    const view = await lim.view([MODEL, PRO]);
    expect(view.filter((v) => v.keyDisabled).map((v) => v.lane)).toEqual([`${MODEL}@${keyId(KEY_A)}`, `${PRO}@${keyId(KEY_A)}`]);
    expect(JSON.stringify(view)).not.toContain(KEY_A);
    expect(JSON.stringify(view)).not.toContain(KEY_B);

    const onB = admitted(await lim.tryAcquire(MODEL));
    expect(await lim.disableKey(onB, 'refused')).toBe(false);
    expect(await lim.tryAcquire(MODEL)).toEqual({ kind: 'no-keys' });
    expect((await lim.acquire(MODEL, 'job')).kind).toBe('no-keys');
  });
});

describe('GEMINI_API_KEY parsing', () => {
  it('keeps one key working, splits several, and drops blanks and repeats', () => {
    expect(geminiApiKeys('AIzaOne')).toEqual(['AIzaOne']);
    expect(geminiApiKeys(' k1 , k2,,k1 ')).toEqual(['k1', 'k2']);
    expect(geminiApiKeys(undefined)).toEqual(['']);
    expect(keyId('AIzaOne')).toMatch(/^[0-9a-f]{12}$/);
    expect(keyId('AIzaOne')).not.toBe(keyId('AIzaTwo'));
  });
});
