/**
 * Model health (issue 4 §2).
 *
 *   GET /v1/models/health   per configured model id: family, calls over the window, estimated
 *                           p50/p95 latency (ms, null without answers), 429 / failure / degraded rates,
 *                           throttled, breaker state (closed | open | half-open), consecutive failures,
 *                           when an open breaker admits a probe, and the last failure code; the
 *                           model's breaker is its best lane's, and `lanes` lists each lane's own.
 *
 * The same snapshot the workers route on (health/health-store.ts); it holds counts and codes only.
 */
import { PixelmillError } from '../../errors/catalogue.js';
import { HealthStore } from '../../health/health-store.js';
import { laneIdsFromConfig } from '../../lanes/limiter.js';
import { redisReady } from '../../queue/producer.js';
import type { RouteModule } from '../context.js';

export const healthRoutes: RouteModule = {
  async v1(v1, ctx) {
    const store = new HealthStore(ctx.redis, ctx.config, {}, { lanesOf: laneIdsFromConfig(ctx.config) });
    const families = [
      ...ctx.config.MODEL_FAST.map((id) => ({ id, family: 'fast' as const })),
      ...ctx.config.MODEL_PRO.map((id) => ({ id, family: 'pro' as const })),
    ];

    v1.get('/models/health', async () => {
      const now = Date.now();
      let snapshot: Awaited<ReturnType<HealthStore['snapshot']>>;
      try {
        await redisReady(ctx.redis, REDIS_READY_TIMEOUT_MS);
        snapshot = await store.snapshot(families.map((m) => m.id), now);
      } catch (err) {
        throw new PixelmillError('QUEUE_UNAVAILABLE', `Redis did not answer the health read: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      const models = families.map(({ id, family }) => {
        const h = snapshot[id]!;
        return {
          model: id, family, calls: h.calls, p50Ms: h.p50, p95Ms: h.p95,
          rate429: round4(h.rate429), rateFailure: round4(h.rateFailure), rateDegraded: round4(h.rateDegraded),
          throttled: h.throttled, breaker: h.breaker, consecutiveFailures: h.consecutiveFailures,
          breakerRetryAt: h.breakerRetryAt === null ? null : new Date(h.breakerRetryAt).toISOString(),
          lastFailure: h.lastFailure,
          // Each lane's own breaker (a lane = model id @ API key id; the model's fields above are its best lane's).
          lanes: h.lanes.map((l) => ({
            lane: l.lane, breaker: l.breaker, consecutiveFailures: l.consecutiveFailures,
            breakerRetryAt: l.breakerRetryAt === null ? null : new Date(l.breakerRetryAt).toISOString(), lastFailure: l.lastFailure,
          })),
        };
      });
      return {
        at: new Date(now).toISOString(),
        windowMs: store.settings.windowMs,
        thresholds: {
          throttle429Rate: store.settings.throttle429Rate, minCalls: store.settings.minCalls,
          breakerFailures: store.settings.breakerFailures, breakerOpenMs: store.settings.breakerOpenMs,
        },
        models,
      };
    });
  },
};

const REDIS_READY_TIMEOUT_MS = 3_000;

function round4(n: number): number {
  return Math.round(n * 1e4) / 1e4;
}
