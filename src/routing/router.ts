/**
 * The router: a pure function of (job, now, model state, model health) that returns the models to
 * try, in order, each with the reason it is there. No I/O, no clock of its own: the worker passes
 * `now` and snapshots of the shared model state and health read from Redis.
 *
 * Health (optional): a throttled first model (429 rate over the window) gives way to the tier's
 * other model even off-peak; a model with an open breaker is skipped like a cooling one, and when
 * nothing else is left the job waits until the breaker admits a probe.
 *
 * The tier policy lives in one place, `DEFAULT_POLICY`:
 * - draft:    Nano Banana 2 only. On 429 or timeout it waits and retries Nano Banana 2; never Pro prices.
 * - standard: off-peak Nano Banana 2 then Pro; inside a peak window Pro then Nano Banana 2.
 * - premium:  Pro only; Nano Banana 2 as fallback only with allowDowngrade.
 */
import type { HistoryEntry } from '../jobs/record.js';
import type { Tier } from '../jobs/request.js';
import {
  FAMILY_LABEL, supports, type AspectRatio, type ImageSize, type ModelFamily,
} from '../models/catalogue.js';
import { activePeakWindow, type PeakWindow } from './peak-windows.js';

export interface TierPolicy {
  offPeak: readonly ModelFamily[];
  peak: readonly ModelFamily[];
  /** Families added at the end only when the job sets allowDowngrade. */
  downgrade: readonly ModelFamily[];
}

export type RoutingPolicy = Readonly<Record<Tier, TierPolicy>>;

export const DEFAULT_POLICY: RoutingPolicy = {
  draft: { offPeak: ['fast'], peak: ['fast'], downgrade: [] },
  standard: { offPeak: ['fast', 'pro'], peak: ['pro', 'fast'], downgrade: [] },
  premium: { offPeak: ['pro'], peak: ['pro'], downgrade: ['fast'] },
};

/** The shared state of the models, read from Redis by the worker (see state/model-state.ts). */
export interface ModelStateSnapshot {
  /** Epoch ms until which a model id must not be called (after a 429), by model id. */
  readonly cooldownUntil: Readonly<Record<string, number>>;
  /** Model ids answered with 404 NOT_FOUND. */
  readonly retired: ReadonlySet<string>;
}

/** A breaker's state as the router sees it (see health/health-store.ts). */
export type BreakerState = 'closed' | 'open' | 'half-open';

/**
 * The health of one model id over the recent window, read from Redis by the worker
 * (health/health-store.ts). Optional input: without it the router routes on peak windows and
 * cooldowns alone.
 */
export interface ModelHealth {
  /** The 429 rate passed HEALTH_THROTTLE_429_RATE with at least HEALTH_MIN_CALLS calls in the window. */
  readonly throttled: boolean;
  /** 429 answers / calls over the window, 0..1. */
  readonly rate429: number;
  /** The window those figures cover (for the reason text). */
  readonly windowMs: number;
  readonly breaker: BreakerState;
  /** When breaker is 'open': epoch ms at which it may admit a probe (or the probe in flight ends). */
  readonly breakerRetryAt?: number | null;
}

export interface RoutableJob {
  tier: Tier;
  size: ImageSize;
  aspectRatio: AspectRatio;
  allowDowngrade: boolean;
  /** The job's calls so far (across attempts), oldest first. */
  history: readonly Pick<HistoryEntry, 'family' | 'outcome' | 'attempt'>[];
  /** The attempt about to run (BullMQ attemptsMade + 1). */
  attempt: number;
}

export interface RouterContext {
  now: number;
  state: ModelStateSnapshot;
  /** Model ids per family, in order of preference (MODEL_FAST, MODEL_PRO). */
  models: Readonly<Record<ModelFamily, readonly string[]>>;
  peakWindows: readonly PeakWindow[];
  timeZone: string;
  policy?: RoutingPolicy;
  /** Per model id; absent ids (and an absent map) count as healthy with a closed breaker. */
  health?: Readonly<Record<string, ModelHealth>>;
}

export interface Candidate {
  family: ModelFamily;
  modelId: string;
  reason: string;
}

export type RouteDecision =
  /** Call `candidates[0]`; the rest are the fallbacks in order. */
  | { kind: 'dispatch'; candidates: Candidate[] }
  /** Every usable model is cooling down or has an open breaker: requeue until `untilMs` (the soonest free). */
  | { kind: 'wait'; untilMs: number; reason: string }
  /** Nothing can serve this job (all ids retired, or the content was blocked everywhere it may go). */
  | { kind: 'none'; reason: string };

/** Outcomes after which the next attempt should prefer the other model, when the tier has one. */
const FALLBACK_OUTCOMES = new Set(['UPSTREAM_TIMEOUT', 'UPSTREAM_UNAVAILABLE', 'BAD_RESPONSE']);

export function route(job: RoutableJob, ctx: RouterContext): RouteDecision {
  const policy = (ctx.policy ?? DEFAULT_POLICY)[job.tier];
  const peak = activePeakWindow(new Date(ctx.now), ctx.peakWindows, ctx.timeZone);
  const base = peak ? policy.peak : policy.offPeak;
  let families: ModelFamily[] = [...base];
  if (job.allowDowngrade) for (const f of policy.downgrade) if (!families.includes(f)) families.push(f);

  const why = new Map<ModelFamily, string>();
  const timing = peak ? `peak window ${peak.label} ${ctx.timeZone}` : 'off-peak';
  families.forEach((f, i) =>
    why.set(f, i === 0 ? `${job.tier} tier, ${timing}: ${FAMILY_LABEL[f]} first` : `${job.tier} tier, ${timing}: ${FAMILY_LABEL[f]} as fallback`),
  );

  // Health: when the tier's first model is throttled (429s over the window) and the tier's other
  // model is not, the other goes first, peak or not; back as soon as the window says it recovered.
  // Only the tier's own families are reordered: a downgrade stays a last resort, draft stays on Nano Banana 2.
  if (ctx.health && base.length > 1) {
    const healthOf = (f: ModelFamily) => {
      const id = ctx.models[f].find((x) => !ctx.state.retired.has(x));
      return id ? ctx.health![id] : undefined;
    };
    const first = families[0]!;
    const h = healthOf(first);
    const alternative = base.find((f) => f !== first && supports(f, job.size, job.aspectRatio) && !healthOf(f)?.throttled);
    if (h?.throttled && alternative) {
      families = [alternative, ...families.filter((f) => f !== alternative)];
      const note = `${FAMILY_LABEL[first]} throttled: 429 rate ${Math.round(h.rate429 * 100)}% over the last ${windowLabel(h.windowMs)}`;
      why.set(alternative, `${job.tier} tier, ${timing}: ${FAMILY_LABEL[alternative]} first; ${note}`);
      why.set(first, `${job.tier} tier, ${timing}: ${FAMILY_LABEL[first]} as fallback; ${note}`);
    }
  }

  // Capability: a family that cannot render this size/ratio is never sent the job.
  const capable = families.filter((f) => supports(f, job.size, job.aspectRatio));
  if (capable.length < families.length) {
    for (const f of capable) {
      why.set(f, `${why.get(f)!}; capability: only ${FAMILY_LABEL[f]} renders size ${job.size} at ${job.aspectRatio}`);
    }
  }
  families = capable;

  // A content block is final on the model that blocked; the job may go on only where it was not blocked.
  const blocked = new Set(job.history.filter((h) => h.outcome === 'CONTENT_BLOCKED' && h.family).map((h) => h.family!));
  if (blocked.size > 0) {
    const before = families;
    families = families.filter((f) => !blocked.has(f));
    for (const f of families) {
      if (before.length > families.length) {
        why.set(f, `retry on ${FAMILY_LABEL[f]} after CONTENT_BLOCKED on ${[...blocked].map((b) => FAMILY_LABEL[b]).join(', ')}`);
      }
    }
  }

  // The previous attempt failed in a way another model may not: try the other model first this time.
  const last = job.history.at(-1);
  if (last && last.family && last.attempt < job.attempt && FALLBACK_OUTCOMES.has(last.outcome) && families.length > 1 && families[0] === last.family) {
    const failed = last.family;
    families = [...families.filter((f) => f !== failed), failed];
    why.set(families[0]!, `fallback to ${FAMILY_LABEL[families[0]!]} after ${last.outcome} on ${FAMILY_LABEL[failed]}`);
  }

  if (families.length === 0) {
    return { kind: 'none', reason: blocked.size > 0 ? 'content blocked on every model this tier may use' : `no model of the ${job.tier} tier renders size ${job.size} at ${job.aspectRatio}` };
  }

  const candidates: Candidate[] = [];
  const cooling: { family: ModelFamily; modelId: string; until: number; why: string }[] = [];
  for (const family of families) {
    // The family's current id is its first one not retired; older ids are used only once newer ones are gone.
    const ids = ctx.models[family];
    const modelId = ids.find((id) => !ctx.state.retired.has(id));
    if (!modelId) continue;
    const retiredBefore = ids.slice(0, ids.indexOf(modelId));
    let reason = why.get(family)!;
    if (retiredBefore.length > 0) reason += `; ${retiredBefore.join(', ')} retired (404), using ${modelId}`;
    const until = ctx.state.cooldownUntil[modelId] ?? 0;
    if (until > ctx.now) {
      cooling.push({ family, modelId, until, why: `${modelId} cooling down for ${((until - ctx.now) / 1000).toFixed(1)} s after 429` });
      continue;
    }
    // An open breaker is skipped like a cooldown; it admits a probe again at breakerRetryAt.
    const health = ctx.health?.[modelId];
    if (health?.breaker === 'open') {
      const retryAt = Math.max(ctx.now + 1, health.breakerRetryAt ?? ctx.now + 1_000);
      cooling.push({ family, modelId, until: retryAt, why: `${modelId} breaker open (half-open in ${((retryAt - ctx.now) / 1000).toFixed(1)} s)` });
      continue;
    }
    if (health?.breaker === 'half-open') reason += `; ${modelId} breaker half-open: this call is the probe`;
    if (cooling.length > 0 && candidates.length === 0) {
      reason = `fallback to ${FAMILY_LABEL[family]}: ${cooling.map((x) => x.why).join(', ')}`;
    }
    candidates.push({ family, modelId, reason });
  }

  if (candidates.length > 0) return { kind: 'dispatch', candidates };
  if (cooling.length > 0) {
    const soonest = cooling.reduce((a, b) => (b.until < a.until ? b : a));
    const allCooling = cooling.every((c) => c.why.includes('cooling down'));
    return {
      kind: 'wait',
      untilMs: soonest.until,
      reason: allCooling
        ? `every model this job may use is cooling down after 429; ${soonest.modelId} is free again in ${((soonest.until - ctx.now) / 1000).toFixed(1)} s`
        : `no model this job may use is available (${cooling.map((c) => c.why).join(', ')}); ${soonest.modelId} is tried again in ${((soonest.until - ctx.now) / 1000).toFixed(1)} s`,
    };
  }
  return { kind: 'none', reason: `every model id of ${families.map((f) => FAMILY_LABEL[f]).join(' and ')} is retired (404 NOT_FOUND)` };
}

/** "5 min", "90 s": the health window in the reason text. */
function windowLabel(ms: number): string {
  return ms % 60_000 === 0 ? `${ms / 60_000} min` : `${Math.round(ms / 1000)} s`;
}
