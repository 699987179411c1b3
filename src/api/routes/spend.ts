/**
 * Spend (issue 4 §4): what the upstream calls cost, per model family and UTC day, for the caller's
 * tenant (the whole deployment without API_KEYS).
 *
 *   GET /v1/spend?days=N   (1..90, default 7, up to today UTC)
 *     {tenant, from, to, totalUsd, byFamily: {fast, pro}, days: [{date, totalUsd, byFamily}],
 *      dailyBudgetUsd: TENANT_DAILY_BUDGET_USD or null}
 *
 * Counted per call from usageMetadata (failed calls included) by src/budget/budgets.ts.
 */
import { z } from 'zod';
import { PixelmillError, isPixelmillError } from '../../errors/catalogue.js';
import { zodIssues } from '../../jobs/request.js';
import { redisReady } from '../../queue/producer.js';
import { readSpend } from '../../budget/budgets.js';
import type { RouteModule } from '../context.js';

const REDIS_READY_TIMEOUT_MS = 5_000;
export const MAX_SPEND_DAYS = 90;

const querySchema = z.object({ days: z.coerce.number().int().min(1).max(MAX_SPEND_DAYS).default(7) }).strict();

export const spendRoutes: RouteModule = {
  async v1(v1, ctx) {
    v1.get('/spend', async (request) => {
      const parsed = querySchema.safeParse(request.query ?? {});
      if (!parsed.success) {
        const issues = zodIssues(parsed.error).map((i) => ({ path: `query.${i.path}`, message: i.message }));
        throw new PixelmillError('INVALID_REQUEST', `Invalid query (${issues.map((i) => `${i.path}: ${i.message}`).join('; ')})`, { details: { issues } });
      }
      try {
        await redisReady(ctx.redis, REDIS_READY_TIMEOUT_MS);
        const report = await readSpend(ctx.config, ctx.redis, ctx.tenantOf(request), parsed.data.days);
        return { ...report, dailyBudgetUsd: ctx.config.TENANT_DAILY_BUDGET_USD ?? null };
      } catch (err) {
        if (isPixelmillError(err)) throw err;
        throw new PixelmillError('QUEUE_UNAVAILABLE', `Redis did not complete reading spend: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
    });
  },
};
