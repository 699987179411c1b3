/**
 * Delivery records: what happened to each webhook event, kept in Redis for JOB_RETENTION.
 *
 *   {QUEUE_PREFIX}:pm:wh:d:{deliveryId}           hash: the record (fields below) and the rendered body
 *                                                 (< 20 KB, never image bytes); PX-expires JOB_RETENTION
 *                                                 after its last change
 *   {QUEUE_PREFIX}:pm:wh:list:{tenant}:all        sorted set of delivery ids scored by creation time
 *   {QUEUE_PREFIX}:pm:wh:list:{tenant}:{status}   the same per status (pending, delivered, failed,
 *                                                 disabled, skipped); {tenant} is `t=<name>` or `anon`.
 *                                                 Entries older than JOB_RETENTION are trimmed on write.
 *   {QUEUE_PREFIX}:pm:wh:obj:{objectId}           sorted set of the deliveries about one job/batch/experiment
 *   {QUEUE_PREFIX}:pm:wh:disabled:{sha256(url)}   hash {url, at, deliveryId}: the endpoint answered 410 Gone;
 *                                                 later events for it are recorded as `disabled` and not
 *                                                 sent. Cleared by replaying a delivery to it; expires
 *                                                 after JOB_RETENTION.
 *
 * Status: pending (being sent or waiting for a retry) → delivered (2xx) | failed (dead letter: retries
 * exhausted, or a 3xx/4xx answer, or a refused address) | disabled (not sent: 410 from this or an
 * earlier delivery) | skipped (not sent: the job ended otherwise than the event says, e.g. an
 * image.succeeded queued by an attempt that then died, after which the job failed).
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { WebhookEvent } from '../jobs/request.js';

export const DELIVERY_STATUSES = ['pending', 'delivered', 'failed', 'disabled', 'skipped'] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];

/** The public view of a delivery (API answers). */
export interface DeliveryRecord {
  /** The event's webhook-id. */
  id: string;
  type: WebhookEvent;
  /** The job, batch or experiment the event is about. */
  objectId: string;
  url: string;
  status: DeliveryStatus;
  /** HTTP requests made (all sends, replays included). */
  attempts: number;
  lastStatusCode: number | null;
  lastError: string | null;
  /** When the next retry is due, while pending after a failed attempt. */
  nextAttemptAt: string | null;
  createdAt: string;
  deliveredAt: string | null;
  replays: number;
}

/** What the worker needs beyond the public view. */
export interface StoredDelivery extends DeliveryRecord {
  tenant: string | null;
  generation: number;
  eventAt: string;
  createdAtMs: number;
  /** The exact body sent (identical on every retry), or null before the first render. */
  body: string | null;
  renderedAtMs: number | null;
}

export interface NewDelivery {
  id: string;
  type: WebhookEvent;
  objectId: string;
  tenant: string | null;
  url: string;
  eventAt: string;
  createdAtMs: number;
}

export type DeliveryUpdate = Partial<{
  attempts: number;
  lastStatusCode: number | null;
  lastError: string | null;
  nextAttemptAt: string | null;
  deliveredAt: string | null;
  body: string | null;
  renderedAtMs: number | null;
}>;

export function deliveryKeys(config: Config) {
  const p = `${config.QUEUE_PREFIX}:pm:wh`;
  const tenantPart = (tenant: string | null) => (tenant === null ? 'anon' : `t=${tenant}`);
  return {
    delivery: (id: string) => `${p}:d:${id}`,
    list: (tenant: string | null, status: DeliveryStatus | 'all') => `${p}:list:${tenantPart(tenant)}:${status}`,
    object: (objectId: string) => `${p}:obj:${objectId}`,
    disabled: (url: string) => `${p}:disabled:${createHash('sha256').update(url).digest('hex').slice(0, 40)}`,
  };
}

/**
 * KEYS: record, list all, list pending, object index. ARGV: score, retention ms, trim-before score,
 * id, field/value pairs. Creates the record once; a second create (a hook that ran twice) changes nothing.
 */
const CREATE_LUA = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 2, 4 do
  redis.call('ZADD', KEYS[i], ARGV[1], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
`;

/**
 * KEYS: record, then the tenant's list per status in DELIVERY_STATUSES order. ARGV: new status or '',
 * retention ms, trim-before score, id, expected generation or '', field/value pairs.
 * Returns 1, 0 (no record) or -1 (another generation owns the record now).
 */
const UPDATE_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'generation') ~= ARGV[5] then return -1 end
if #ARGV >= 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
if ARGV[1] ~= '' then
  local order = {pending = 2, delivered = 3, failed = 4, disabled = 5, skipped = 6}
  local score = redis.call('HGET', KEYS[1], 'createdAtMs')
  for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[4]) end
  local target = KEYS[order[ARGV[1]]]
  redis.call('ZADD', target, score, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', target, '-inf', '(' .. ARGV[3])
  redis.call('PEXPIRE', target, ARGV[2])
  redis.call('HSET', KEYS[1], 'status', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

/**
 * KEYS as UPDATE_LUA. ARGV: id, retention ms, now ISO. Starts a new generation unless one is pending.
 * Returns {started (1|0), generation} or {-1, 0} without a record.
 */
const REPLAY_LUA = `
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
if redis.call('HGET', KEYS[1], 'status') == 'pending' then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'generation'))}
end
local gen = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('HSET', KEYS[1], 'status', 'pending', 'body', '', 'renderedAtMs', '', 'nextAttemptAt', '', 'replayedAt', ARGV[3])
local score = redis.call('HGET', KEYS[1], 'createdAtMs')
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, gen}
`;

export interface DeliveryPage {
  deliveries: DeliveryRecord[];
  /** Pass as `cursor` for the next (older) page; null on the last page. */
  nextCursor: string | null;
}

export class DeliveryStore {
  readonly keys: ReturnType<typeof deliveryKeys>;

  constructor(
    private readonly redis: Redis,
    private readonly config: Config,
    private readonly now: () => number = Date.now,
  ) {
    this.keys = deliveryKeys(config);
  }

  /** Create the record if it does not exist yet; true when this call created it. */
  async create(d: NewDelivery): Promise<boolean> {
    const k = this.keys;
    const fields: Record<string, string> = {
      id: d.id, type: d.type, objectId: d.objectId, tenant: d.tenant ?? '', url: d.url, status: 'pending', attempts: '0',
      lastStatusCode: '', lastError: '', nextAttemptAt: '', createdAt: new Date(d.createdAtMs).toISOString(),
      createdAtMs: String(d.createdAtMs), deliveredAt: '', generation: '0', replays: '0', eventAt: d.eventAt, body: '', renderedAtMs: '',
    };
    const created = await this.redis.eval(
      CREATE_LUA, 4, k.delivery(d.id), k.list(d.tenant, 'all'), k.list(d.tenant, 'pending'), k.object(d.objectId),
      String(d.createdAtMs), String(this.config.JOB_RETENTION), String(this.trimBefore()), d.id, ...Object.entries(fields).flat(),
    );
    return created === 1;
  }

  async get(id: string): Promise<StoredDelivery | undefined> {
    const h = await this.redis.hgetall(this.keys.delivery(id));
    return h['id'] ? fromHash(h) : undefined;
  }

  /**
   * Change fields and, with `status`, move the record between the status lists. With `generation`,
   * only while that generation owns the record (a replay started since makes this a no-op: false).
   */
  async update(d: Pick<StoredDelivery, 'id' | 'tenant'>, changes: DeliveryUpdate, status?: DeliveryStatus, generation?: number): Promise<boolean> {
    const pairs = Object.entries(changes).flatMap(([f, v]) => [f, v === null || v === undefined ? '' : String(v)]);
    const res = await this.redis.eval(
      UPDATE_LUA, 1 + DELIVERY_STATUSES.length, this.keys.delivery(d.id), ...DELIVERY_STATUSES.map((s) => this.keys.list(d.tenant, s)),
      status ?? '', String(this.config.JOB_RETENTION), String(this.trimBefore()), d.id, generation === undefined ? '' : String(generation), ...pairs,
    );
    return res === 1;
  }

  /** Count one HTTP request; returns the new total. */
  async countAttempt(id: string): Promise<number> {
    return this.redis.hincrby(this.keys.delivery(id), 'attempts', 1);
  }

  /**
   * Start sending again (same webhook-id, body re-rendered): 'started' with the new generation, or
   * 'pending' with the current one when a send is already under way, or undefined without a record.
   */
  async beginReplay(d: Pick<StoredDelivery, 'id' | 'tenant'>): Promise<{ started: boolean; generation: number } | undefined> {
    const [code, generation] = (await this.redis.eval(
      REPLAY_LUA, 1 + DELIVERY_STATUSES.length, this.keys.delivery(d.id), ...DELIVERY_STATUSES.map((s) => this.keys.list(d.tenant, s)),
      d.id, String(this.config.JOB_RETENTION), new Date(this.now()).toISOString(),
    )) as [number, number];
    if (code === -1) return undefined;
    return { started: code === 1, generation: Number(generation) };
  }

  /** Newest first. `cursor` comes from the previous page's nextCursor. */
  async list(tenant: string | null, status: DeliveryStatus | undefined, cursor: string | undefined, limit: number): Promise<DeliveryPage> {
    const key = this.keys.list(tenant, status ?? 'all');
    const after = cursor === undefined ? undefined : decodeCursor(cursor);
    const entries: { id: string; score: number }[] = [];
    if (after) {
      // Members with the cursor's score that sort after it (REV order: smaller ids), then older scores.
      const ties = pairsOf(await this.redis.zrange(key, String(after.score), String(after.score), 'BYSCORE', 'WITHSCORES'));
      entries.push(...ties.filter((e) => e.id < after.id).reverse().slice(0, limit + 1));
      if (entries.length < limit + 1) {
        entries.push(...pairsOf(await this.redis.zrange(key, `(${after.score}`, '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, limit + 1 - entries.length, 'WITHSCORES')));
      }
    } else {
      entries.push(...pairsOf(await this.redis.zrange(key, '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, limit + 1, 'WITHSCORES')));
    }
    const page = entries.slice(0, limit);
    const records = await this.many(page.map((e) => e.id));
    const last = page.at(-1);
    return {
      // A record can expire a moment before its list entry is trimmed: skip it.
      deliveries: records.filter((r): r is StoredDelivery => r !== undefined && (status === undefined || r.status === status)).map(publicView),
      nextCursor: entries.length > limit && last ? encodeCursor(last) : null,
    };
  }

  /** The deliveries about one job, batch or experiment, newest first. */
  async forObject(objectId: string): Promise<StoredDelivery[]> {
    const ids = await this.redis.zrange(this.keys.object(objectId), '0', '-1', 'REV');
    return (await this.many(ids)).filter((r): r is StoredDelivery => r !== undefined);
  }

  /** Why the endpoint is disabled (it answered 410), or undefined. */
  async disabledEndpoint(url: string): Promise<{ at: string; deliveryId: string } | undefined> {
    const h = await this.redis.hgetall(this.keys.disabled(url));
    return h['at'] ? { at: h['at'], deliveryId: h['deliveryId'] ?? '' } : undefined;
  }

  async disableEndpoint(url: string, deliveryId: string): Promise<void> {
    const key = this.keys.disabled(url);
    await this.redis.multi().hset(key, { url, at: new Date(this.now()).toISOString(), deliveryId }).pexpire(key, this.config.JOB_RETENTION).exec();
  }

  async enableEndpoint(url: string): Promise<void> {
    await this.redis.del(this.keys.disabled(url));
  }

  private async many(ids: string[]): Promise<(StoredDelivery | undefined)[]> {
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hgetall(this.keys.delivery(id));
    const results = (await pipeline.exec()) ?? [];
    return results.map(([err, h]) => {
      if (err) throw err;
      const hash = h as Record<string, string>;
      return hash['id'] ? fromHash(hash) : undefined;
    });
  }

  private trimBefore(): number {
    return this.now() - this.config.JOB_RETENTION;
  }
}

export function publicView(d: StoredDelivery): DeliveryRecord {
  return {
    id: d.id, type: d.type, objectId: d.objectId, url: d.url, status: d.status, attempts: d.attempts, lastStatusCode: d.lastStatusCode,
    lastError: d.lastError, nextAttemptAt: d.nextAttemptAt, createdAt: d.createdAt, deliveredAt: d.deliveredAt, replays: d.replays,
  };
}

function fromHash(h: Record<string, string>): StoredDelivery {
  const orNull = (v: string | undefined) => (v === undefined || v === '' ? null : v);
  const num = (v: string | undefined) => (v === undefined || v === '' ? null : Number(v));
  return {
    id: h['id']!, type: h['type'] as WebhookEvent, objectId: h['objectId'] ?? '', url: h['url'] ?? '',
    status: (h['status'] ?? 'pending') as DeliveryStatus, attempts: Number(h['attempts'] ?? 0),
    lastStatusCode: num(h['lastStatusCode']), lastError: orNull(h['lastError']), nextAttemptAt: orNull(h['nextAttemptAt']),
    createdAt: h['createdAt'] ?? '', deliveredAt: orNull(h['deliveredAt']), replays: Number(h['replays'] ?? 0),
    tenant: orNull(h['tenant']), generation: Number(h['generation'] ?? 0), eventAt: h['eventAt'] ?? h['createdAt'] ?? '',
    createdAtMs: Number(h['createdAtMs'] ?? 0), body: orNull(h['body']), renderedAtMs: num(h['renderedAtMs']),
  };
}

function pairsOf(flat: string[]): { id: string; score: number }[] {
  const out: { id: string; score: number }[] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push({ id: flat[i]!, score: Number(flat[i + 1]) });
  return out;
}

function encodeCursor(e: { id: string; score: number }): string {
  return Buffer.from(`${e.score}|${e.id}`).toString('base64url');
}

export class InvalidCursorError extends Error {}

function decodeCursor(cursor: string): { id: string; score: number } {
  const raw = Buffer.from(cursor, 'base64url').toString();
  const idx = raw.indexOf('|');
  const score = Number(raw.slice(0, idx));
  const id = raw.slice(idx + 1);
  if (idx <= 0 || !Number.isFinite(score) || !/^evt_[A-Za-z0-9_-]+$/.test(id)) throw new InvalidCursorError('cursor is not one this API returned');
  return { id, score };
}
