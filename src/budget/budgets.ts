/**
 * Budgets and spend (issue 4 §4): a batch's `maxCostUsd`, an optional per-tenant daily cap
 * (TENANT_DAILY_BUDGET_USD, UTC days), and spend totals per model family and day.
 *
 * Every upstream call is admitted first: one Lua script checks, for each budget that applies,
 *
 *   spent so far + in-flight reservations of other calls + this call's list price  <=  cap
 *
 * and reserves the list price (listPricePerImage: the image tokens at the image rate) atomically, so
 * workers racing for the last dollars cannot all pass. After the call its actual cost (from
 * usageMetadata, failed calls included) replaces the reservation. Over budget, the job fails with
 * BUDGET_EXCEEDED, or, when its batch has `allowBudgetDowngrade`, a Pro call is made on Nano Banana 2
 * instead (the draft tier for that call), reason "budget: downgraded to Nano Banana 2".
 *
 * Overshoot bound: a budget can only be passed by the difference between the actual cost and the
 * list price of the calls in flight when it runs out (prompt and text/thinking tokens are not in the
 * estimate): a few tenths of a cent per in-flight call, never a whole image per worker slot.
 *
 * Keys (`p` = `${QUEUE_PREFIX}:pm`):
 *   p:batch:{id}            field `spentMicros`: actual spend of the batch's calls (micro-USD)
 *   p:batch:{id}:reserved   job id → `micros|expiresAtMs`, one live reservation per job
 *   p:budget:tenant:{t}:{YYYY-MM-DD}           field `spentMicros` (t = tenant, `-` without API_KEYS)
 *   p:budget:tenant:{t}:{YYYY-MM-DD}:reserved  as above
 *   p:spend:{YYYY-MM-DD}    field `{t}|{family}` → micro-USD spent that UTC day (GET /v1/spend)
 *   p:spend:total           the same fields since the deployment began, never expiring (the
 *                           pixelmill_spend_usd_total counter of GET /metrics)
 * A reservation is keyed by job id (a job makes one call at a time, and a re-run replaces its own)
 * and expires after the call's budget plus RESERVATION_SLACK_MS, so a worker that died mid-call
 * never holds budget for long.
 */
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { PixelmillError, isPixelmillError } from '../errors/catalogue.js';
import type { StoredJobData, Usage } from '../jobs/record.js';
import type { Logger } from '../logging/logger.js';
import { FAMILY_LABEL, MODEL_FAMILIES, type ModelFamily } from '../models/catalogue.js';
import { costFromUsage, listPricePerImage } from '../models/pricing.js';
import type { Candidate, ModelStateSnapshot } from '../routing/router.js';
import { batchInfoSchema, batchKeys, fromMicros, toMicros, type BatchInfo } from '../batches/record.js';
import { runScript } from '../batches/scripts.js';

export const BUDGET_DOWNGRADE_REASON = 'budget: downgraded to Nano Banana 2';
/** A reservation outlives its call's budget by this much before it counts as abandoned. */
export const RESERVATION_SLACK_MS = 60_000;
/** Spend counters per day are kept this long. */
export const SPEND_RETENTION_MS = 400 * 86_400_000;
const TENANT_DAY_TTL_MS = 3 * 86_400_000;
/** Batch infos cached per worker (written once, so never stale). */
const INFO_CACHE_SIZE = 1_000;

export function budgetKeys(config: Config) {
  const p = `${config.QUEUE_PREFIX}:pm`;
  return {
    batchReserved: (batchId: string) => `${batchKeys(config, batchId).record}:reserved`,
    tenantDay: (tenant: string | null, day: string) => `${p}:budget:tenant:${tenant ?? '-'}:${day}`,
    tenantDayReserved: (tenant: string | null, day: string) => `${p}:budget:tenant:${tenant ?? '-'}:${day}:reserved`,
    spendDay: (day: string) => `${p}:spend:${day}`,
    spendTotal: `${p}:spend:total`,
  };
}

export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/**
 * KEYS: (spentHash, reservedHash) per budget. ARGV: now, expiresAt, jobId, estimate, ttlMs, then one
 * cap per budget (micro-USD). Returns {0} when reserved in every budget, else {i, spent, reserved}
 * of the first budget (1-based) the call would pass; nothing is reserved then.
 */
const RESERVE_LUA = `
local now = tonumber(ARGV[1])
local job = ARGV[3]
local est = tonumber(ARGV[4])
local n = #KEYS / 2
for i = 1, n do
  local resKey = KEYS[2 * i]
  local cap = tonumber(ARGV[5 + i])
  local spent = tonumber(redis.call('HGET', KEYS[2 * i - 1], 'spentMicros') or '0') or 0
  local reserved = 0
  local all = redis.call('HGETALL', resKey)
  for j = 1, #all, 2 do
    local v = all[j + 1]
    local sep = string.find(v, '|', 1, true)
    local amount = tonumber(string.sub(v, 1, sep - 1)) or 0
    local untilMs = tonumber(string.sub(v, sep + 1)) or 0
    if untilMs < now then
      redis.call('HDEL', resKey, all[j])
    elseif all[j] ~= job then
      reserved = reserved + amount
    end
  end
  if spent + reserved + est > cap then return {i, spent, reserved} end
end
for i = 1, n do
  redis.call('HSET', KEYS[2 * i], job, ARGV[4] .. '|' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[2 * i], tonumber(ARGV[5]))
end
return {0}
`;

/**
 * KEYS: spendDay, spendTotal, then (spentHash, reservedHash) per budget. ARGV: jobId, actual micros,
 * spend field, spend ttl, ttl for a budget hash that has none. Drops the job's reservations and adds
 * the actual cost everywhere.
 */
const SETTLE_LUA = `
local cost = tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[3], cost)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[2], ARGV[3], cost)
for i = 3, #KEYS, 2 do
  redis.call('HDEL', KEYS[i + 1], ARGV[1])
  redis.call('HINCRBY', KEYS[i], 'spentMicros', cost)
  if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[5])) end
end
return 1
`;

/** One budget a call is checked against. */
interface Budget {
  label: string;
  spentKey: string;
  reservedKey: string;
  capMicros: number;
  ttlMs: number;
}

export interface AdmitInput {
  jobId: string;
  data: StoredJobData;
  candidate: Candidate;
  /** MODEL_FAST ids in order, and the fleet's model state: where a budget downgrade goes. */
  fastModelIds: readonly string[];
  state: ModelStateSnapshot;
  /** The call's time budget (ms): the reservation expires after it plus RESERVATION_SLACK_MS. */
  callBudgetMs: number;
}

export type Admission =
  | { kind: 'ok'; candidate: Candidate; reservation: Reservation; downgraded: boolean }
  | { kind: 'exceeded'; error: PixelmillError }
  /** Downgraded, but Nano Banana 2 is cooling down: requeue until then (no attempt consumed). */
  | { kind: 'wait'; untilMs: number; reason: string };

/** A call's reservation: run the call through `around`, which settles it with the actual cost. */
export interface Reservation {
  around<T extends { usage: Usage }>(call: () => Promise<T>): Promise<T>;
  /** Give the reservation back without a call (the job was requeued before calling). */
  release(): Promise<void>;
}

export interface BudgetGate {
  admit(input: AdmitInput): Promise<Admission>;
}

/** Spend is still counted per family and day when no budget applies. */
export class RedisBudgets implements BudgetGate {
  private readonly k: ReturnType<typeof budgetKeys>;
  private readonly infos = new Map<string, BatchInfo | null>();

  constructor(
    private readonly redis: Redis,
    private readonly config: Config,
    private readonly opts: { now?: () => number; logger?: Logger } = {},
  ) {
    this.k = budgetKeys(config);
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  async admit(input: AdmitInput): Promise<Admission> {
    const { data, candidate } = input;
    const req = data.request;
    const now = this.now();
    const day = utcDay(now);
    const budgets: Budget[] = [];
    const info = data.batchId ? await this.batchInfo(data.batchId) : null;
    if (data.batchId && info?.maxCostUsd !== undefined) {
      budgets.push({
        label: `batch ${data.batchId} maxCostUsd ${info.maxCostUsd}`, spentKey: batchKeys(this.config, data.batchId).record,
        reservedKey: this.k.batchReserved(data.batchId), capMicros: toMicros(info.maxCostUsd), ttlMs: this.config.JOB_RETENTION,
      });
    }
    if (this.config.TENANT_DAILY_BUDGET_USD !== undefined) {
      budgets.push({
        label: `TENANT_DAILY_BUDGET_USD ${this.config.TENANT_DAILY_BUDGET_USD} for ${data.tenant ?? 'the deployment'} on ${day} (UTC)`,
        spentKey: this.k.tenantDay(data.tenant, day), reservedKey: this.k.tenantDayReserved(data.tenant, day),
        capMicros: toMicros(this.config.TENANT_DAILY_BUDGET_USD), ttlMs: TENANT_DAY_TTL_MS,
      });
    }
    const expiresAt = now + input.callBudgetMs + RESERVATION_SLACK_MS;
    const reserveFor = async (c: Candidate) => {
      const estimate = toMicros(listPricePerImage(c.family, req.size) ?? 0);
      if (budgets.length === 0) return { ok: true as const };
      const res = (await runScript(
        this.redis, RESERVE_LUA, budgets.flatMap((b) => [b.spentKey, b.reservedKey]),
        [now, expiresAt, input.jobId, estimate, Math.max(...budgets.map((b) => b.ttlMs)), ...budgets.map((b) => b.capMicros)],
      )) as number[];
      if (Number(res[0]) === 0) return { ok: true as const };
      return { ok: false as const, budget: budgets[Number(res[0]) - 1]!, spent: Number(res[1]), reserved: Number(res[2]), estimate };
    };

    const first = await reserveFor(candidate);
    if (first.ok) return { kind: 'ok', candidate, reservation: this.reservation(input.jobId, data.tenant, candidate.family, budgets), downgraded: false };

    const over = (r: { budget: Budget; spent: number; reserved: number; estimate: number }, family: ModelFamily) =>
      new PixelmillError('BUDGET_EXCEEDED', `the next ${FAMILY_LABEL[family]} call (list price $${fromMicros(r.estimate)}) would pass ${r.budget.label}: $${fromMicros(r.spent)} spent, $${fromMicros(r.reserved)} reserved by calls in flight`, {
        details: { spentUsd: fromMicros(r.spent), reservedUsd: fromMicros(r.reserved), estimateUsd: fromMicros(r.estimate) },
      });

    // The batch allows finishing on Nano Banana 2: a Pro call becomes a draft-tier call.
    if (info?.allowBudgetDowngrade && candidate.family === 'pro') {
      const fastId = input.fastModelIds.find((id) => !input.state.retired.has(id));
      if (fastId) {
        const until = input.state.cooldownUntil[fastId] ?? 0;
        if (until > now) return { kind: 'wait', untilMs: until, reason: `${BUDGET_DOWNGRADE_REASON}, which is cooling down after 429` };
        const fast: Candidate = { family: 'fast', modelId: fastId, reason: BUDGET_DOWNGRADE_REASON };
        const second = await reserveFor(fast);
        if (second.ok) return { kind: 'ok', candidate: fast, reservation: this.reservation(input.jobId, data.tenant, 'fast', budgets), downgraded: true };
        return { kind: 'exceeded', error: over(second, 'fast') };
      }
    }
    return { kind: 'exceeded', error: over(first, candidate.family) };
  }

  private reservation(jobId: string, tenant: string | null, family: ModelFamily, budgets: Budget[]): Reservation {
    const settle = async (costUsd: number) => {
      const day = utcDay(this.now());
      try {
        await runScript(
          this.redis, SETTLE_LUA, [this.k.spendDay(day), this.k.spendTotal, ...budgets.flatMap((b) => [b.spentKey, b.reservedKey])],
          [jobId, toMicros(costUsd), `${tenant ?? '-'}|${family}`, SPEND_RETENTION_MS, TENANT_DAY_TTL_MS],
        );
      } catch (err) {
        // The call is made and paid; losing the counter update must not lose the image. The
        // reservation expires by itself.
        this.opts.logger?.warn({ jobId, err: (err as Error).message }, 'could not record spend');
      }
    };
    return {
      release: async () => {
        if (budgets.length === 0) return;
        await this.redis.multi(budgets.map((b) => ['hdel', b.reservedKey, jobId])).exec().catch((err: unknown) => {
          this.opts.logger?.warn({ jobId, err: (err as Error).message }, 'could not release a budget reservation');
        });
      },
      async around(call) {
        let result;
        try {
          result = await call();
        } catch (err) {
          const usage = isPixelmillError(err) ? (err.details['usage'] as Usage | undefined) : undefined;
          await settle(usage ? costFromUsage(family, usage) : 0);
          throw err;
        }
        await settle(costFromUsage(family, result.usage));
        return result;
      },
    };
  }

  private async batchInfo(batchId: string): Promise<BatchInfo | null> {
    const cached = this.infos.get(batchId);
    if (cached !== undefined) return cached;
    const raw = await this.redis.hget(batchKeys(this.config, batchId).record, 'info');
    const parsed = raw ? batchInfoSchema.safeParse(JSON.parse(raw)) : undefined;
    const info = parsed?.success ? parsed.data : null;
    if (this.infos.size >= INFO_CACHE_SIZE) this.infos.delete(this.infos.keys().next().value!);
    // Only a found record is cached: a batch still being written may appear a moment later.
    if (info) this.infos.set(batchId, info);
    return info;
  }
}

/** No budgets and no spend counters (processors built without Redis, e.g. in unit tests). */
export const UNLIMITED_BUDGETS: BudgetGate = {
  async admit(input) {
    return { kind: 'ok', candidate: input.candidate, downgraded: false, reservation: { around: (call) => call(), release: async () => {} } };
  },
};

export interface SpendReport {
  tenant: string | null;
  from: string;
  to: string;
  totalUsd: number;
  byFamily: Record<ModelFamily, number>;
  days: { date: string; totalUsd: number; byFamily: Record<ModelFamily, number> }[];
}

/** Spend of one tenant per UTC day and family, the last `days` days up to today (one pipelined round trip). */
export async function readSpend(config: Config, redis: Redis, tenant: string | null, days: number, now: number = Date.now()): Promise<SpendReport> {
  const k = budgetKeys(config);
  const dates = Array.from({ length: days }, (_, i) => utcDay(now - (days - 1 - i) * 86_400_000));
  const pipe = redis.pipeline();
  for (const d of dates) pipe.hmget(k.spendDay(d), ...MODEL_FAMILIES.map((f) => `${tenant ?? '-'}|${f}`));
  const rows = (await pipe.exec()) ?? [];
  const zero = () => Object.fromEntries(MODEL_FAMILIES.map((f) => [f, 0])) as Record<ModelFamily, number>;
  const total = zero();
  const out = dates.map((date, i) => {
    const [err, values] = rows[i] ?? [null, []];
    if (err) throw err;
    const byFamily = zero();
    MODEL_FAMILIES.forEach((f, j) => {
      const micros = Number((values as (string | null)[])[j] ?? 0) || 0;
      byFamily[f] = fromMicros(micros);
      total[f] += micros;
    });
    return { date, totalUsd: fromMicros(MODEL_FAMILIES.reduce((s, f) => s + toMicros(byFamily[f]), 0)), byFamily };
  });
  const byFamily = zero();
  for (const f of MODEL_FAMILIES) byFamily[f] = fromMicros(total[f]);
  return {
    tenant, from: dates[0]!, to: dates.at(-1)!, byFamily,
    totalUsd: fromMicros(MODEL_FAMILIES.reduce((s, f) => s + total[f], 0)), days: out,
  };
}

/** One row of the all-time spend: a tenant (null without API_KEYS) and a model family. */
export interface SpendTotal {
  tenant: string | null;
  family: ModelFamily;
  usd: number;
}

/** Spend since the deployment began, per tenant and family (one HGETALL). */
export async function readSpendTotals(config: Config, redis: Redis): Promise<SpendTotal[]> {
  const fields = await redis.hgetall(budgetKeys(config).spendTotal);
  const out: SpendTotal[] = [];
  for (const [field, micros] of Object.entries(fields)) {
    const sep = field.lastIndexOf('|');
    const family = field.slice(sep + 1);
    if (sep < 0 || !(MODEL_FAMILIES as readonly string[]).includes(family)) continue; // not ours
    const tenant = field.slice(0, sep);
    out.push({ tenant: tenant === '-' ? null : tenant, family: family as ModelFamily, usd: fromMicros(Number(micros) || 0) });
  }
  return out;
}
