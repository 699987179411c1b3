/**
 * Model state shared by every worker of the fleet, kept in Redis:
 *
 *   {QUEUE_PREFIX}:pm:model:{id}:cooldown  epoch ms until which nobody calls the model (after a 429);
 *                                          PX-expires shortly after, so Redis holds no stale keys
 *   {QUEUE_PREFIX}:pm:model:{id}:retired   set when the id answered 404 NOT_FOUND; expires after
 *                                          RETIRED_TTL_MS so a mistaken retirement heals by itself
 *
 * One worker's 429 makes the whole fleet back off; one worker's 404 moves the whole fleet to the next id.
 */
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { keys } from '../queue/image-queue.js';
import type { ModelStateSnapshot } from '../routing/router.js';

export const RETIRED_TTL_MS = 6 * 3_600_000;

/**
 * KEYS[1] cooldown key. ARGV[1] until (epoch ms), ARGV[2] now (epoch ms).
 * Only ever extends a cooldown: two workers reporting 429s at once keep the later end.
 * Returns the cooldown end in force.
 */
const EXTEND_COOLDOWN_LUA = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local untilMs = tonumber(ARGV[1])
if untilMs > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', math.max(1, untilMs - tonumber(ARGV[2])) + 1000)
  return untilMs
end
return current
`;

export class ModelStateStore {
  private readonly k: ReturnType<typeof keys>;

  constructor(
    private readonly redis: Redis,
    config: Config,
    private readonly now: () => number = Date.now,
  ) {
    this.k = keys(config);
    this.redis.defineCommand('pmExtendCooldown', { numberOfKeys: 1, lua: EXTEND_COOLDOWN_LUA });
  }

  /** One round trip: the cooldowns and retirements of every id given. */
  async snapshot(modelIds: readonly string[]): Promise<ModelStateSnapshot> {
    if (modelIds.length === 0) return { cooldownUntil: {}, retired: new Set() };
    const values = await this.redis.mget(...modelIds.flatMap((id) => [this.k.cooldown(id), this.k.retired(id)]));
    const cooldownUntil: Record<string, number> = {};
    const retired = new Set<string>();
    modelIds.forEach((id, i) => {
      const until = Number(values[2 * i] ?? 0);
      if (until > 0) cooldownUntil[id] = until;
      if (values[2 * i + 1] !== null && values[2 * i + 1] !== undefined) retired.add(id);
    });
    return { cooldownUntil, retired };
  }

  /** Close a model for everyone until `untilMs` (never shortens an existing cooldown). */
  async extendCooldown(modelId: string, untilMs: number): Promise<number> {
    const cmd = (this.redis as unknown as { pmExtendCooldown(key: string, until: number, now: number): Promise<number> }).pmExtendCooldown;
    return Number(await cmd.call(this.redis, this.k.cooldown(modelId), Math.round(untilMs), this.now()));
  }

  async markRetired(modelId: string, reason: string): Promise<void> {
    await this.redis.set(this.k.retired(modelId), reason.slice(0, 300), 'PX', RETIRED_TTL_MS);
  }
}

/**
 * Gemini's per-day quotas reset at midnight Pacific time (rate-limits page). Returns the epoch ms of
 * the next midnight in `timeZone` after `now`.
 */
export function nextMidnight(now: number, timeZone = 'America/Los_Angeles'): number {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone, hourCycle: 'h23', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).formatToParts(new Date(now));
  const get = (t: string) => Number(parts.find((p) => p.type === t)?.value ?? 0);
  const elapsedMs = ((get('hour') * 60 + get('minute')) * 60 + get('second')) * 1000 + (now % 1000);
  // Correct across DST changes: step to the estimated midnight, then re-check the local time there.
  let candidate = now - elapsedMs + 86_400_000;
  for (let i = 0; i < 3; i++) {
    const p = new Intl.DateTimeFormat('en-US', { timeZone, hourCycle: 'h23', hour: '2-digit', minute: '2-digit' }).formatToParts(new Date(candidate));
    const h = Number(p.find((x) => x.type === 'hour')?.value ?? 0);
    const m = Number(p.find((x) => x.type === 'minute')?.value ?? 0);
    const off = h * 60 + m;
    if (off === 0) break;
    candidate += off < 12 * 60 ? -off * 60_000 : (24 * 60 - off) * 60_000;
  }
  return candidate;
}
