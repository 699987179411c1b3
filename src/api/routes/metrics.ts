/**
 * GET /metrics: the fleet's figures in the Prometheus text format (src/metrics/fleet-metrics.ts),
 * plus this API process's own (prefix pixelmill_api_).
 *
 * Access. The figures cover every tenant (spend per tenant), so a tenant's API key does not open
 * them. With METRICS_TOKEN set, a scrape sends `Authorization: Bearer <METRICS_TOKEN>`. Without it,
 * /metrics is open only on a server without API_KEYS (which listens on loopback); a server with
 * API_KEYS answers 401 until METRICS_TOKEN is set.
 */
import { PixelmillError, isPixelmillError } from '../../errors/catalogue.js';
import { createFleetMetrics, type FleetMetrics } from '../../metrics/fleet-metrics.js';
import { redisReady } from '../../queue/producer.js';
import { createAuthenticator } from '../auth.js';
import type { RouteModule } from '../context.js';

const REDIS_READY_TIMEOUT_MS = 5_000;

export const metricsRoutes: RouteModule = {
  async root(root, ctx) {
    const { config } = ctx;
    const token = config.METRICS_TOKEN;
    const authenticate = token === undefined ? undefined : createAuthenticator([{ tenant: 'metrics', key: token }]);
    // Made on the first scrape: the process metrics start timers that a server never scraped does not need.
    let metrics: FleetMetrics | undefined;

    root.get('/metrics', async (request, reply) => {
      if (authenticate) {
        if (!authenticate(request.headers.authorization)) throw new PixelmillError('UNAUTHORIZED', 'GET /metrics needs the METRICS_TOKEN');
      } else if (config.API_KEYS.length > 0) {
        throw new PixelmillError('UNAUTHORIZED', 'GET /metrics is closed on a server with API_KEYS until METRICS_TOKEN is set (tenant keys do not open it: it shows every tenant\'s spend)');
      }
      metrics ??= createFleetMetrics({ config, redis: ctx.redis, queue: ctx.queue, processMetrics: true });
      let text: string;
      try {
        await redisReady(ctx.redis, REDIS_READY_TIMEOUT_MS);
        text = await metrics.render();
      } catch (err) {
        if (isPixelmillError(err)) throw err;
        throw new PixelmillError('QUEUE_UNAVAILABLE', `Redis did not answer the metrics read: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      void reply.header('content-type', metrics.contentType);
      return text;
    });
  },
};
