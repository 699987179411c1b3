/**
 * GET /v1/lanes: the fleet's shared model lanes (src/lanes), one row per (model id, API key): learned
 * rate, operator ceiling, calls in flight, closure (429 / per-day quota) and whether the key is out
 * of rotation after a 401/403. Keys appear only as their short sha256 (`keyId`).
 */
import { LaneLimiter, laneOptionsFromConfig } from '../../lanes/limiter.js';
import type { RouteModule } from '../context.js';

export const lanesRoutes: RouteModule = {
  async v1(v1, ctx) {
    const lanes = new LaneLimiter(ctx.redis, ctx.config.QUEUE_PREFIX, laneOptionsFromConfig(ctx.config));
    v1.get('/lanes', async () => ({
      enabled: ctx.config.LANES_ENABLED,
      lanes: await lanes.view([...ctx.config.MODEL_FAST, ...ctx.config.MODEL_PRO]),
    }));
  },
};
