/**
 * Circuit breakers per lane (a (model, API key) pair), against the real redis-server with an injected
 * clock: one key's failures open that lane only; the lane gate skips an open lane, admits one probe
 * on a half-open one (claimed with the slot), and the probe's success closes it. The model's breaker,
 * as the router sees it, is its best lane's.
 */
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { HealthStore } from '../../src/health/health-store.js';
import { keyId, laneId } from '../../src/lanes/keys.js';
import { LaneLimiter, laneIdsFromConfig, laneOptionsFromConfig, type AcquireAnswer, type LaneLease } from '../../src/lanes/limiter.js';
import { testConfig } from '../support/stack.js';

const MODEL = 'gemini-3.1-flash-image';
const KEY_A = 'key-aaaaaaaaaaaaaaaa';
const KEY_B = 'key-bbbbbbbbbbbbbbbb';
const LANE_A = laneId(MODEL, keyId(KEY_A));
const LANE_B = laneId(MODEL, keyId(KEY_B));

const connections: Redis[] = [];
afterAll(async () => {
  await Promise.all(connections.map((c) => c.quit()));
});

function fleetMember(env: { clock: { t: number } }, config: ReturnType<typeof testConfig>) {
  const redis = new Redis(config.REDIS_URL);
  connections.push(redis);
  const lanes = new LaneLimiter(redis, config.QUEUE_PREFIX, { ...laneOptionsFromConfig(config), initialRpm: 600_000, burst: 1_000 }, {
    now: () => env.clock.t, sleep: async () => {}, random: () => 0,
  });
  const health = new HealthStore(redis, config, {}, { lanesOf: laneIdsFromConfig(config) });
  return { lanes, health };
}

function admitted(a: AcquireAnswer): LaneLease {
  if (a.kind !== 'admitted') throw new Error(`expected admission, got ${JSON.stringify(a)}`);
  return a.lease;
}

describe('circuit breaker per lane', () => {
  const config = testConfig({ GEMINI_API_KEY: `${KEY_A},${KEY_B}`, BREAKER_FAILURES: 2, BREAKER_OPEN_MS: '30s' });
  const T0 = Date.parse('2026-11-21T09:00:00Z');
  const env = { clock: { t: T0 } };
  const a = fleetMember(env, config);
  const b = fleetMember(env, config);

  it('one key failing opens its lane only; the gate sends calls to the other key; the model stays closed', async () => {
    // Two consecutive timeouts on key A's lane.
    for (let i = 0; i < 2; i++) await a.health.recordOutcome(MODEL, { outcome: 'UPSTREAM_TIMEOUT', latencyMs: 1 }, env.clock.t + i, LANE_A);
    const snap = (await b.health.snapshot([MODEL], env.clock.t + 10))[MODEL]!;
    expect(snap.breaker).toBe('closed');
    expect(snap.lanes).toEqual([
      { lane: LANE_A, breaker: 'open', consecutiveFailures: 2, breakerRetryAt: env.clock.t + 1 + 30_000, lastFailure: 'UPSTREAM_TIMEOUT' },
      { lane: LANE_B, breaker: 'closed', consecutiveFailures: 0, breakerRetryAt: null, lastFailure: null },
    ]);
    // Every admission goes to key B while A is open.
    env.clock.t += 10;
    for (let i = 0; i < 4; i++) expect(admitted(await b.lanes.tryAcquire(MODEL)).lane).toBe(LANE_B);
  });

  it('every lane open: the model is open until its earliest lane may probe, and the gate refuses with "breaker"', async () => {
    for (let i = 0; i < 2; i++) await b.health.recordOutcome(MODEL, { outcome: 'UPSTREAM_UNAVAILABLE', latencyMs: 1 }, env.clock.t + i, LANE_B);
    const snap = (await a.health.snapshot([MODEL], env.clock.t + 5))[MODEL]!;
    expect(snap.breaker).toBe('open');
    expect(snap.breakerRetryAt).toBe(snap.lanes.find((l) => l.lane === LANE_A)!.breakerRetryAt);
    const refused = await a.lanes.tryAcquire(MODEL);
    expect(refused).toMatchObject({ kind: 'refused', why: 'breaker', lane: LANE_A });
  });

  it('half-open: one probe across the fleet, claimed with the slot; its success closes the lane', async () => {
    // A opened at T0 + 1, B at T0 + 11 (30 s each): between the two, A may probe and B may not.
    env.clock.t = T0 + 30_005;
    expect((await a.health.snapshot([MODEL], env.clock.t))[MODEL]!.breaker).toBe('half-open');
    const [first, second] = await Promise.all([a.lanes.tryAcquire(MODEL), b.lanes.tryAcquire(MODEL)]);
    const answers = [first, second];
    const probes = answers.filter((x) => x.kind === 'admitted' && x.lease.probeToken);
    expect(probes).toHaveLength(1);
    // The other caller is told to look again soon: the probe is out.
    expect(answers.filter((x) => x.kind === 'refused' && x.why === 'breaker')).toHaveLength(1);
    const probe = (probes[0] as { lease: LaneLease }).lease;
    expect(probe.lane).toBe(LANE_A);
    expect(probe.probeToken).toBe(probe.leaseId);

    await a.health.recordOutcome(MODEL, { outcome: 'succeeded', latencyMs: 900, probeToken: probe.probeToken! }, env.clock.t + 900, LANE_A);
    const snap = (await b.health.snapshot([MODEL], env.clock.t + 1_000))[MODEL]!;
    expect(snap.lanes.find((l) => l.lane === LANE_A)).toMatchObject({ breaker: 'closed', consecutiveFailures: 0 });
    expect(snap.breaker).toBe('closed');
    env.clock.t += 1_000;
    const next = admitted(await b.lanes.tryAcquire(MODEL));
    expect(next.lane).toBe(LANE_A);
    expect(next.probeToken).toBeUndefined();
  });

  it('a probe whose call never ran (the job was requeued, the worker stopped) is given back: the next caller probes at once', async () => {
    env.clock.t = T0 + 40_000; // B may probe now; open A again so that B is the only lane left
    for (let i = 0; i < 2; i++) await a.health.recordOutcome(MODEL, { outcome: 'UPSTREAM_TIMEOUT', latencyMs: 1 }, env.clock.t + i, LANE_A);
    env.clock.t += 10;
    const probe = admitted(await a.lanes.tryAcquire(MODEL));
    expect(probe).toMatchObject({ lane: LANE_B, probeToken: probe.leaseId });
    expect(await b.lanes.tryAcquire(MODEL)).toMatchObject({ kind: 'refused', why: 'breaker' });
    expect(await a.health.releaseProbe(LANE_B, probe.probeToken!)).toBe(true);
    const again = admitted(await b.lanes.tryAcquire(MODEL));
    expect(again).toMatchObject({ lane: LANE_B, probeToken: again.leaseId });
  });
});
