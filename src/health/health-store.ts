/**
 * Model health and circuit breakers, in Redis, shared by the fleet.
 *
 * Sliding window (per model id):
 *   {QUEUE_PREFIX}:pm:health:{modelId}:{bucket}   a hash per HEALTH_BUCKET (10 s) of time, bucket =
 *                                                  floor(now / HEALTH_BUCKET); fields c (calls), r (429s),
 *                                                  f (failures: timeout, 5xx, unreadable answer),
 *                                                  d (degraded answers), h<i> (latency histogram, see
 *                                                  latency-histogram.ts). PX-expires one window after its
 *                                                  bucket ends, so the window is pruned as it slides.
 *   A snapshot sums the buckets inside the window: the last ceil(WINDOW / BUCKET) buckets including the
 *   current, partly elapsed one, so it covers between WINDOW - BUCKET and WINDOW of history.
 *   Latency is recorded for calls that returned an image (the generation time that matters for
 *   routing); a 429 or an early 503 would otherwise make a saturated model look fast.
 *
 * Circuit breaker (per lane: a (model id, API key) pair of src/lanes, or the model id itself when lanes
 * are off; `lanesOf` tells the store which lanes a model has):
 *   {QUEUE_PREFIX}:pm:breaker:{laneId}   hash: failures (consecutive), openUntil (epoch ms; absent =
 *                                        closed), probe + probeUntil (the one probe call in flight),
 *                                        lastFailure (code). Expires after a day without calls.
 *   closed    → open       after BREAKER_FAILURES consecutive failures (any success resets the count)
 *   open      → half-open  once now ≥ openUntil: the next caller claims the probe (claimProbe)
 *   half-open → closed     the probe succeeds
 *   half-open → open       the probe fails (for another BREAKER_OPEN_MS)
 *   While open, other calls' outcomes (calls started before it opened) change nothing.
 * The probe is claimed in Lua like SET NX, with its expiry kept as a value compared with the caller's
 * clock (so an injected clock works); a probe whose worker died frees itself after the upstream timeout.
 * With lanes, the lane gate claims the probe in the same script that admits the call (limiter.ts).
 * A model's breaker, as the router sees it, is its best lane's: closed while any lane is closed,
 * half-open while one may probe, open (until its earliest lane may probe) when every lane is open.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { BreakerState, ModelHealth } from '../routing/router.js';
import { SharedRead } from '../state/shared-read.js';
import { latencyBucket, quantile } from './latency-histogram.js';

/** Outcomes that count as a failure for the failure rate and the breaker. */
export const FAILURE_OUTCOMES: ReadonlySet<string> = new Set(['UPSTREAM_TIMEOUT', 'UPSTREAM_UNAVAILABLE', 'BAD_RESPONSE']);
/** The outcome of a call that returned an image (the history's 'succeeded'). */
export const SUCCESS_OUTCOME = 'succeeded';

export interface CallOutcome {
  /** 'succeeded' or the error code of the call (RATE_LIMITED, UPSTREAM_TIMEOUT, ...). */
  outcome: string;
  latencyMs: number;
  /** A 200 whose image is not what was asked (size, model version). */
  degraded?: boolean;
  /** The token from claimProbe when this call was the breaker's probe. */
  probeToken?: string;
}

/** One model's health over the window, plus its breaker. The router needs a subset (ModelHealth). */
export interface ModelHealthSnapshot extends ModelHealth {
  calls: number;
  /** Estimated latency percentiles (ms) of calls that returned an image; null without any. */
  p50: number | null;
  p95: number | null;
  rate429: number;
  rateFailure: number;
  rateDegraded: number;
  throttled: boolean;
  windowMs: number;
  breaker: BreakerState;
  /** Consecutive failures counted by the breaker. */
  consecutiveFailures: number;
  /** When open: the epoch ms at which it admits a probe (or the probe in flight times out). */
  breakerRetryAt: number | null;
  lastFailure: string | null;
  /** Each lane's own breaker (the fields above combine them). */
  lanes: LaneBreakerSnapshot[];
}

export interface LaneBreakerSnapshot {
  lane: string;
  breaker: BreakerState;
  consecutiveFailures: number;
  breakerRetryAt: number | null;
  lastFailure: string | null;
}

/** The breaker's Redis key of a lane; the lane gate (src/lanes/limiter.ts) reads and claims it too. */
export function breakerKey(queuePrefix: string, laneId: string): string {
  return `${queuePrefix}:pm:breaker:${laneId}`;
}

export type ClaimResult =
  /** This caller holds the probe: pass the token to recordOutcome. */
  | { kind: 'probe'; token: string }
  /** The breaker closed in the meantime: call freely. */
  | { kind: 'closed' }
  /** Still open, or another caller holds the probe: do not call. */
  | { kind: 'busy'; retryAt: number };

export interface HealthSettings {
  windowMs: number;
  bucketMs: number;
  throttle429Rate: number;
  minCalls: number;
  breakerFailures: number;
  breakerOpenMs: number;
  /** How long a claimed probe may stay in flight before another caller may probe. */
  probeTtlMs: number;
}

export function healthSettings(config: Config): HealthSettings {
  return {
    windowMs: config.HEALTH_WINDOW,
    bucketMs: Math.max(1, Math.min(config.HEALTH_BUCKET, config.HEALTH_WINDOW)),
    throttle429Rate: config.HEALTH_THROTTLE_429_RATE,
    minCalls: config.HEALTH_MIN_CALLS,
    breakerFailures: config.BREAKER_FAILURES,
    breakerOpenMs: config.BREAKER_OPEN_MS,
    probeTtlMs: config.UPSTREAM_TIMEOUT_MS + 30_000,
  };
}

/**
 * KEYS[1] window bucket hash, KEYS[2] breaker hash.
 * ARGV[1] bucket TTL ms, ARGV[2] is429 (0|1), ARGV[3] isFailure (0|1), ARGV[4] isDegraded (0|1),
 * ARGV[5] latency histogram bucket ('' = no latency sample), ARGV[6] breaker effect
 * (success | failure | neutral), ARGV[7] outcome code, ARGV[8] now (epoch ms), ARGV[9] BREAKER_FAILURES,
 * ARGV[10] BREAKER_OPEN_MS, ARGV[11] probe token ('' = not a probe), ARGV[12] breaker key TTL ms.
 * Returns {state, consecutive failures} after the call: state 0 closed, 1 open.
 */
const RECORD_LUA = `
redis.call('HINCRBY', KEYS[1], 'c', 1)
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'r', 1) end
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'f', 1) end
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'd', 1) end
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[1], 'h' .. ARGV[5], 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])

local now = tonumber(ARGV[8])
local openUntil = tonumber(redis.call('HGET', KEYS[2], 'openUntil') or '0')
local isProbe = ARGV[11] ~= '' and redis.call('HGET', KEYS[2], 'probe') == ARGV[11]
local effect = ARGV[6]
if effect == 'success' then
  if openUntil == 0 then
    -- Closed: a success ends the run of failures (the key holds nothing else worth keeping).
    redis.call('DEL', KEYS[2])
  elseif isProbe then
    redis.call('DEL', KEYS[2])
    return {0, 0}
  end
elseif effect == 'failure' then
  if openUntil == 0 then
    local failures = redis.call('HINCRBY', KEYS[2], 'failures', 1)
    redis.call('HSET', KEYS[2], 'lastFailure', ARGV[7])
    if failures >= tonumber(ARGV[9]) then
      redis.call('HSET', KEYS[2], 'openUntil', now + tonumber(ARGV[10]))
      redis.call('HDEL', KEYS[2], 'probe', 'probeUntil')
    end
  elseif isProbe then
    redis.call('HINCRBY', KEYS[2], 'failures', 1)
    redis.call('HSET', KEYS[2], 'openUntil', now + tonumber(ARGV[10]), 'lastFailure', ARGV[7])
    redis.call('HDEL', KEYS[2], 'probe', 'probeUntil')
  end
elseif isProbe then
  -- The probe neither succeeded nor failed (a 429, a content block): free it for the next caller.
  redis.call('HDEL', KEYS[2], 'probe', 'probeUntil')
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[12]) end
local state = 0
if tonumber(redis.call('HGET', KEYS[2], 'openUntil') or '0') > 0 then state = 1 end
return {state, tonumber(redis.call('HGET', KEYS[2], 'failures') or '0')}
`;

/**
 * KEYS[1] breaker hash. ARGV[1] now (epoch ms), ARGV[2] token, ARGV[3] probe TTL ms.
 * The half-open admission: at most one probe in flight, fleet-wide.
 * Returns {1, 0} probe claimed, {0, 0} breaker closed, {-1, retryAt} busy (still open, or probing).
 */
const CLAIM_PROBE_LUA = `
local now = tonumber(ARGV[1])
local openUntil = tonumber(redis.call('HGET', KEYS[1], 'openUntil') or '0')
if openUntil == 0 then return {0, 0} end
if openUntil > now then return {-1, openUntil} end
local probeUntil = tonumber(redis.call('HGET', KEYS[1], 'probeUntil') or '0')
if probeUntil > now then return {-1, probeUntil} end
redis.call('HSET', KEYS[1], 'probe', ARGV[2], 'probeUntil', now + tonumber(ARGV[3]))
return {1, 0}
`;

/**
 * KEYS[1] breaker hash. ARGV[1] token. Gives back a probe that was claimed but not used (the job was
 * requeued by the lane gate, or the worker shut down mid-call), so the next caller may probe at once.
 */
const RELEASE_PROBE_LUA = `
if redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'probe', 'probeUntil')
  return 1
end
return 0
`;

/**
 * KEYS: for each model in turn, the breaker hashes of its lanes then its ARGV[1] window bucket hashes
 * (oldest first). ARGV[1] buckets per model; ARGV[1 + m] lanes of model m. Sums the window inside
 * Redis so a routing decision costs one small reply.
 * Returns per model {calls, 429s, failures, degraded, {per lane: failures, openUntil, probeUntil,
 * lastFailure}, {h<i>, count, ...}} ('' for an absent breaker field).
 */
const SNAPSHOT_LUA = `
local n = tonumber(ARGV[1])
local out = {}
local k = 1
local m = 1
while k <= #KEYS do
  local lanes = tonumber(ARGV[1 + m])
  local b = {}
  for i = 1, lanes do
    local f = redis.call('HMGET', KEYS[k], 'failures', 'openUntil', 'probeUntil', 'lastFailure')
    b[#b + 1] = {f[1] or '', f[2] or '', f[3] or '', f[4] or ''}
    k = k + 1
  end
  k = k - 1
  local c, r, f, d = 0, 0, 0, 0
  local hist = {}
  for i = 1, n do
    local flat = redis.call('HGETALL', KEYS[k + i])
    for j = 1, #flat, 2 do
      local field, v = flat[j], tonumber(flat[j + 1])
      if field == 'c' then c = c + v
      elseif field == 'r' then r = r + v
      elseif field == 'f' then f = f + v
      elseif field == 'd' then d = d + v
      else hist[field] = (hist[field] or 0) + v end
    end
  end
  local h = {}
  for field, v in pairs(hist) do
    h[#h + 1] = field
    h[#h + 1] = v
  end
  out[#out + 1] = {c, r, f, d, b, h}
  k = k + n + 1
  m = m + 1
end
return out
`;

const BREAKER_KEY_TTL_MS = 86_400_000;

type ScriptedRedis = Redis & {
  pmHealthRecord(...args: (string | number)[]): Promise<[number, number]>;
  pmHealthClaimProbe(...args: (string | number)[]): Promise<[number, number]>;
  pmHealthReleaseProbe(key: string, token: string): Promise<number>;
  pmHealthSnapshot(numberOfKeys: number, ...args: (string | number)[]): Promise<SnapshotRow[]>;
};
type SnapshotRow = [number, number, number, number, [string, string, string, string][], (string | number)[]];

export class HealthStore {
  private readonly prefix: string;
  readonly settings: HealthSettings;

  /** The last snapshot per set of model ids (or the one being read), shared by callers within `snapshotCacheMs`. */
  private readonly snapshots: SharedRead<Record<string, ModelHealthSnapshot>>;
  /** The lane ids of a model (src/lanes: one per API key); without lanes, the model id alone. */
  private readonly lanesOf: (modelId: string) => readonly string[];
  private readonly queuePrefix: string;

  constructor(
    private readonly redis: Redis,
    config: Config,
    overrides: Partial<HealthSettings> = {},
    /**
     * snapshotCacheMs: reuse a snapshot this long. Workers set it (a few hundred ms): when hundreds of jobs
     * start together they share one read instead of one Redis script each (bench:inflight saw a 1.3 s
     * event-loop stall from that). 0 (the default) reads every time.
     */
    opts: { snapshotCacheMs?: number; lanesOf?: (modelId: string) => readonly string[] } = {},
  ) {
    this.snapshots = new SharedRead(opts.snapshotCacheMs ?? 0);
    this.lanesOf = opts.lanesOf ?? ((modelId) => [modelId]);
    this.queuePrefix = config.QUEUE_PREFIX;
    this.prefix = `${config.QUEUE_PREFIX}:pm`;
    this.settings = { ...healthSettings(config), ...overrides };
    this.redis.defineCommand('pmHealthRecord', { numberOfKeys: 2, lua: RECORD_LUA });
    this.redis.defineCommand('pmHealthClaimProbe', { numberOfKeys: 1, lua: CLAIM_PROBE_LUA });
    this.redis.defineCommand('pmHealthReleaseProbe', { numberOfKeys: 1, lua: RELEASE_PROBE_LUA });
    // The number of keys depends on the models asked for: passed first on each call.
    this.redis.defineCommand('pmHealthSnapshot', { lua: SNAPSHOT_LUA });
  }

  private bucketKey(modelId: string, bucket: number): string {
    return `${this.prefix}:health:${modelId}:${bucket}`;
  }

  private breakerKey(laneId: string): string {
    return breakerKey(this.queuePrefix, laneId);
  }

  /**
   * Record one upstream call: into the model's window and into the breaker of `laneId` (the call's
   * lane; the model id when lanes are off). One atomic script, one round trip.
   * Returns the breaker's state after the call.
   */
  async recordOutcome(modelId: string, call: CallOutcome, now: number, laneId: string = modelId): Promise<{ breaker: 'closed' | 'open'; consecutiveFailures: number }> {
    this.snapshots.forget(); // this worker's own news is seen at once
    const { bucketMs, windowMs } = this.settings;
    const bucket = Math.floor(now / bucketMs);
    const isFailure = FAILURE_OUTCOMES.has(call.outcome);
    const isSuccess = call.outcome === SUCCESS_OUTCOME;
    const effect = isSuccess ? 'success' : isFailure ? 'failure' : 'neutral';
    const [state, failures] = await (this.redis as ScriptedRedis).pmHealthRecord(
      this.bucketKey(modelId, bucket), this.breakerKey(laneId),
      // The bucket is read until its end falls out of the window: keep it that long, plus a margin.
      (bucket + 1) * bucketMs - now + windowMs + 1_000,
      call.outcome === 'RATE_LIMITED' ? 1 : 0, isFailure ? 1 : 0, isSuccess && call.degraded ? 1 : 0,
      isSuccess ? String(latencyBucket(call.latencyMs)) : '',
      effect, call.outcome, Math.round(now), this.settings.breakerFailures, this.settings.breakerOpenMs,
      call.probeToken ?? '', BREAKER_KEY_TTL_MS,
    );
    return { breaker: Number(state) === 1 ? 'open' : 'closed', consecutiveFailures: Number(failures) };
  }

  /** Claim the single probe of a half-open breaker (see ClaimResult). */
  async claimProbe(laneId: string, now: number): Promise<ClaimResult> {
    const token = randomUUID();
    const [kind, at] = await (this.redis as ScriptedRedis).pmHealthClaimProbe(this.breakerKey(laneId), Math.round(now), token, this.settings.probeTtlMs);
    if (Number(kind) === 1) return { kind: 'probe', token };
    if (Number(kind) === 0) return { kind: 'closed' };
    return { kind: 'busy', retryAt: Number(at) };
  }

  /** Give back an unused probe (no call was made with it). True when this token held it. */
  async releaseProbe(laneId: string, token: string): Promise<boolean> {
    return Number(await (this.redis as ScriptedRedis).pmHealthReleaseProbe(this.breakerKey(laneId), token)) === 1;
  }

  /** The health of each model id (and of its lanes' breakers) at `now`. One round trip (or none, cached). */
  snapshot(modelIds: readonly string[], now: number): Promise<Record<string, ModelHealthSnapshot>> {
    return this.snapshots.get(modelIds.join(','), () => this.readSnapshot(modelIds, now), now);
  }

  private async readSnapshot(modelIds: readonly string[], now: number): Promise<Record<string, ModelHealthSnapshot>> {
    const { bucketMs, windowMs } = this.settings;
    const current = Math.floor(now / bucketMs);
    const count = Math.max(1, Math.ceil(windowMs / bucketMs));
    const keys: string[] = [];
    const laneIds = modelIds.map((id) => this.lanesOf(id));
    modelIds.forEach((id, m) => {
      for (const lane of laneIds[m]!) keys.push(this.breakerKey(lane));
      for (let b = current - count + 1; b <= current; b++) keys.push(this.bucketKey(id, b));
    });
    const rows = modelIds.length === 0 ? [] : await (this.redis as ScriptedRedis).pmHealthSnapshot(keys.length, ...keys, count, ...laneIds.map((l) => l.length));
    const out: Record<string, ModelHealthSnapshot> = {};
    modelIds.forEach((id, m) => {
      const [c, r, f, d, breakers, flat] = rows[m]!;
      const histogram = new Map<number, number>();
      for (let j = 0; j + 1 < flat.length; j += 2) histogram.set(Number(String(flat[j]).slice(1)), Number(flat[j + 1]));
      const lanes = laneIds[m]!.map((lane, i) => {
        const [failures, openUntil, probeUntil, lastFailure] = breakers[i]!;
        return this.laneBreaker(lane, now, {
          failures: Number(failures || 0), openUntil: Number(openUntil || 0), probeUntil: Number(probeUntil || 0), lastFailure: lastFailure || null,
        });
      });
      out[id] = this.summarize({ c: Number(c), r: Number(r), f: Number(f), d: Number(d) }, histogram, lanes);
    });
    return out;
  }

  private laneBreaker(
    lane: string, now: number, b: { failures: number; openUntil: number; probeUntil: number; lastFailure: string | null },
  ): LaneBreakerSnapshot {
    let breaker: BreakerState = 'closed';
    let breakerRetryAt: number | null = null;
    if (b.openUntil > 0) {
      if (b.openUntil > now) {
        breaker = 'open';
        breakerRetryAt = b.openUntil;
      } else if (b.probeUntil > now) {
        // A probe is in flight elsewhere: open for everyone else. Look again within BREAKER_OPEN_MS
        // (the probe usually answers long before its upstream timeout).
        breaker = 'open';
        breakerRetryAt = Math.min(b.probeUntil, now + this.settings.breakerOpenMs);
      } else {
        breaker = 'half-open';
      }
    }
    return { lane, breaker, consecutiveFailures: b.failures, breakerRetryAt, lastFailure: b.lastFailure };
  }

  /** The model's figures; its breaker is its best lane's (closed > half-open > open, earliest retry). */
  private summarize(t: { c: number; r: number; f: number; d: number }, histogram: Map<number, number>, lanes: LaneBreakerSnapshot[]): ModelHealthSnapshot {
    const rate = (n: number) => (t.c > 0 ? n / t.c : 0);
    const rate429 = rate(t.r);
    const rank: Record<BreakerState, number> = { closed: 0, 'half-open': 1, open: 2 };
    const best = [...lanes].sort((a, b) => rank[a.breaker] - rank[b.breaker] || (a.breakerRetryAt ?? 0) - (b.breakerRetryAt ?? 0))[0]!;
    return {
      calls: t.c,
      p50: quantile(histogram, 0.5),
      p95: quantile(histogram, 0.95),
      rate429,
      rateFailure: rate(t.f),
      rateDegraded: rate(t.d),
      throttled: t.c >= this.settings.minCalls && rate429 >= this.settings.throttle429Rate,
      windowMs: this.settings.windowMs,
      breaker: best.breaker,
      consecutiveFailures: best.consecutiveFailures,
      breakerRetryAt: best.breakerRetryAt,
      lastFailure: best.lastFailure ?? lanes.find((l) => l.lastFailure)?.lastFailure ?? null,
      lanes,
    };
  }
}
