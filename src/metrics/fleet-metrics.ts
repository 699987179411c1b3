/**
 * Prometheus metrics of the whole fleet, read from Redis when scraped (GET /metrics on the API).
 *
 * Workers keep no counters of their own. Everything a dashboard or an alert needs is fleet state
 * that is already in Redis: spend, queue depth, the shared lanes, model health. So one scrape target
 * gives the fleet's figures whatever the number of workers, and a worker's restart loses nothing.
 * Each scrape reads once (a few round trips) and sets every series from that one read; series of
 * lanes or models that are gone disappear with the next scrape (every metric is reset first).
 *
 *   pixelmill_spend_usd_total{tenant,family}      counter: actual cost of every upstream call since the
 *                                                 deployment began (usageMetadata, failed calls included)
 *   pixelmill_jobs{state}                         gauge: image jobs per BullMQ state (completed and failed
 *                                                 are the retained ones, see JOB_RETENTION)
 *   pixelmill_lane_rate_rpm{model,key_id}         gauge: the dispatch rate in force (lanes that pace)
 *   pixelmill_lane_ceiling_rpm{model,key_id}      gauge: MODEL_FAST_RPM / MODEL_PRO_RPM, when set
 *   pixelmill_lane_in_flight{model,key_id}        gauge: calls in flight on the lane, fleet-wide
 *   pixelmill_lane_closed{model,key_id}           gauge: 1 while closed by a 429 or a per-day quota
 *   pixelmill_lane_key_disabled{model,key_id}     gauge: 1 while the key is out of rotation (401/403)
 *   pixelmill_model_calls{model,family}           gauge: calls over HEALTH_WINDOW
 *   pixelmill_model_latency_seconds{model,family,quantile}  gauge: estimated p50 / p95 of answered calls
 *   pixelmill_model_rate{model,family,kind}       gauge: share of the window's calls: 429, failure, degraded
 *   pixelmill_model_throttled{model,family}       gauge: 1 when the router counts the model as throttled
 *   pixelmill_model_breaker{model,family,state}   gauge: 1 for the breaker's state (closed, open, half-open)
 *
 * `tenant` is "-" without API_KEYS. `key_id` is the key's short sha256 (never the key).
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { readSpendTotals } from '../budget/budgets.js';
import type { Config } from '../config/env.js';
import { HealthStore, type ModelHealthSnapshot } from '../health/health-store.js';
import { LaneLimiter, laneIdsFromConfig, laneOptionsFromConfig } from '../lanes/limiter.js';
import type { ModelFamily } from '../models/catalogue.js';

/** BullMQ states reported by pixelmill_jobs. */
export const JOB_STATES = ['waiting', 'prioritized', 'active', 'delayed', 'waiting-children', 'completed', 'failed'] as const;
const BREAKER_STATES = ['closed', 'open', 'half-open'] as const;

export interface FleetMetricsDeps {
  config: Config;
  redis: Redis;
  /** The image queue (job counts). */
  queue: Queue;
  /** Also expose this process's own metrics (CPU, memory, event loop) with the prefix `pixelmill_api_`. */
  processMetrics?: boolean;
  now?: () => number;
}

export interface FleetMetrics {
  readonly contentType: string;
  /** Read the fleet's state and render it in the Prometheus text format. */
  render(): Promise<string>;
}

export function createFleetMetrics(deps: FleetMetricsDeps): FleetMetrics {
  const { config, redis, queue } = deps;
  const now = deps.now ?? Date.now;
  const registry = new Registry();
  if (deps.processMetrics) collectDefaultMetrics({ register: registry, prefix: 'pixelmill_api_' });
  const registers = [registry];

  const spend = new Counter({ name: 'pixelmill_spend_usd_total', help: 'Actual cost of upstream calls since the deployment began, USD', labelNames: ['tenant', 'family'], registers });
  const jobs = new Gauge({ name: 'pixelmill_jobs', help: 'Image jobs per queue state', labelNames: ['state'], registers });
  const laneLabels = ['model', 'key_id'] as const;
  const laneRate = new Gauge({ name: 'pixelmill_lane_rate_rpm', help: 'Dispatch rate in force on the lane, requests per minute', labelNames: laneLabels, registers });
  const laneCeiling = new Gauge({ name: 'pixelmill_lane_ceiling_rpm', help: 'Operator ceiling of the lane (MODEL_FAST_RPM / MODEL_PRO_RPM)', labelNames: laneLabels, registers });
  const laneInFlight = new Gauge({ name: 'pixelmill_lane_in_flight', help: 'Calls in flight on the lane, fleet-wide', labelNames: laneLabels, registers });
  const laneClosed = new Gauge({ name: 'pixelmill_lane_closed', help: '1 while the lane is closed by a 429 or a per-day quota', labelNames: laneLabels, registers });
  const laneKeyDisabled = new Gauge({ name: 'pixelmill_lane_key_disabled', help: '1 while the lane\'s API key is out of rotation after a 401/403', labelNames: laneLabels, registers });
  const modelLabels = ['model', 'family'] as const;
  const modelCalls = new Gauge({ name: 'pixelmill_model_calls', help: 'Calls over the health window', labelNames: modelLabels, registers });
  const modelLatency = new Gauge({ name: 'pixelmill_model_latency_seconds', help: 'Estimated latency quantiles of answered calls over the health window', labelNames: [...modelLabels, 'quantile'], registers });
  const modelRate = new Gauge({ name: 'pixelmill_model_rate', help: 'Share of the health window\'s calls answered 429 (kind=429), failed (failure) or degraded', labelNames: [...modelLabels, 'kind'], registers });
  const modelThrottled = new Gauge({ name: 'pixelmill_model_throttled', help: '1 when the router counts the model as throttled', labelNames: modelLabels, registers });
  const modelBreaker = new Gauge({ name: 'pixelmill_model_breaker', help: '1 for the state the model\'s circuit breaker is in', labelNames: [...modelLabels, 'state'], registers });
  const fleetSeries = [spend, jobs, laneRate, laneCeiling, laneInFlight, laneClosed, laneKeyDisabled, modelCalls, modelLatency, modelRate, modelThrottled, modelBreaker];

  const lanes = new LaneLimiter(redis, config.QUEUE_PREFIX, laneOptionsFromConfig(config));
  const health = new HealthStore(redis, config, {}, { lanesOf: laneIdsFromConfig(config) });
  const models: { id: string; family: ModelFamily }[] = [
    ...config.MODEL_FAST.map((id) => ({ id, family: 'fast' as const })),
    ...config.MODEL_PRO.map((id) => ({ id, family: 'pro' as const })),
  ];

  return {
    contentType: registry.contentType,
    async render() {
      const [spendTotals, counts, laneViews, snapshot] = await Promise.all([
        readSpendTotals(config, redis),
        queue.getJobCounts(...JOB_STATES),
        lanes.view(models.map((m) => m.id)),
        health.snapshot(models.map((m) => m.id), now()),
      ]);
      for (const metric of fleetSeries) metric.reset();

      for (const row of spendTotals) spend.inc({ tenant: row.tenant ?? '-', family: row.family }, row.usd);
      for (const state of JOB_STATES) jobs.set({ state }, counts[state] ?? 0);
      for (const lane of laneViews) {
        const labels = { model: lane.model, key_id: lane.keyId };
        if (lane.rpm !== null) laneRate.set(labels, lane.rpm);
        if (lane.ceilingRpm !== null) laneCeiling.set(labels, lane.ceilingRpm);
        laneInFlight.set(labels, lane.inFlight);
        laneClosed.set(labels, lane.closedUntil !== undefined ? 1 : 0);
        laneKeyDisabled.set(labels, lane.keyDisabled !== undefined ? 1 : 0);
      }
      for (const { id, family } of models) {
        const h: ModelHealthSnapshot | undefined = snapshot[id];
        if (!h) continue;
        const labels = { model: id, family };
        modelCalls.set(labels, h.calls);
        if (h.p50 !== null) modelLatency.set({ ...labels, quantile: '0.5' }, h.p50 / 1000);
        if (h.p95 !== null) modelLatency.set({ ...labels, quantile: '0.95' }, h.p95 / 1000);
        modelRate.set({ ...labels, kind: '429' }, h.rate429);
        modelRate.set({ ...labels, kind: 'failure' }, h.rateFailure);
        modelRate.set({ ...labels, kind: 'degraded' }, h.rateDegraded);
        modelThrottled.set(labels, h.throttled ? 1 : 0);
        for (const state of BREAKER_STATES) modelBreaker.set({ ...labels, state }, h.breaker === state ? 1 : 0);
      }
      return registry.metrics();
    },
  };
}
