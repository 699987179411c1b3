/**
 * The batch's Lua scripts. Each runs atomically in Redis, which is what makes the counts exact:
 * a job is counted once however often its terminal event arrives, a changed outcome moves the
 * counts, and exactly one caller sees the batch become complete (HSETNX of finishedAt).
 *
 * Keys are described in ./record.ts. Scripts that touch a job's BullMQ hash build its key from the
 * queue prefix, as BullMQ's own scripts do (same cluster slot when QUEUE_PREFIX is a `{tag}`).
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

/** Shared functions, prepended to the scripts that use them. */
const LIB = `
local function account(rec, done, jobs, sp, jobKey, jobId, status, cost)
  local entry = status .. '|' .. cost
  local prev = redis.call('HGET', done, jobId)
  if prev == entry then return 0 end
  local idx = redis.call('ZSCORE', jobs, jobId)
  if not idx then return -2 end
  if prev then
    local sep = string.find(prev, '|', 1, true)
    local pstatus = string.sub(prev, 1, sep - 1)
    local pcost = tonumber(string.sub(prev, sep + 1)) or 0
    redis.call('HINCRBY', rec, 'n:' .. pstatus, -1)
    redis.call('HINCRBY', rec, 'costMicros', -pcost)
    redis.call('ZREM', sp .. pstatus, jobId)
  end
  redis.call('HSET', done, jobId, entry)
  redis.call('HINCRBY', rec, 'n:' .. status, 1)
  redis.call('HINCRBY', rec, 'costMicros', cost)
  redis.call('ZADD', sp .. status, idx, jobId)
  local processedOn = tonumber(redis.call('HGET', jobKey, 'processedOn'))
  if processedOn and processedOn > 0 then
    local started = tonumber(redis.call('HGET', rec, 'startedAt'))
    if (not started) or processedOn < started then redis.call('HSET', rec, 'startedAt', processedOn) end
  end
  return 1
end

-- 0: not complete; 2: this call completed the batch; 1: it was complete before.
local function completion(rec, done, at)
  local st = redis.call('HGET', rec, 'status')
  if st ~= 'open' and st ~= 'canceled' then return 0 end
  local total = tonumber(redis.call('HGET', rec, 'total')) or 0
  if redis.call('HLEN', done) < total then return 0 end
  if redis.call('HSETNX', rec, 'finishedAt', at) == 1 then return 2 end
  return 1
end

local function completedBy(rec, c, who)
  if c == 2 then redis.call('HSET', rec, 'completedBy', who) end
end

-- Whether the caller should queue batch.completed: the batch is complete, has a webhook, and the
-- event is not recorded as queued. \`by\`: only the caller that completed the batch (or a re-run of
-- it) is told, so duplicated hooks of other jobs do not all queue it; nil: any caller.
local function needsWebhook(rec, complete, by)
  if complete == 0 then return 0 end
  if by and complete ~= 2 and redis.call('HGET', rec, 'completedBy') ~= by then return 0 end
  if redis.call('HEXISTS', rec, 'webhook') == 0 then return 0 end
  if redis.call('HEXISTS', rec, 'webhookQueuedAt') == 1 then return 0 end
  return 1
end

local function renew(rec, jobs, done, sp, ms)
  for _, k in ipairs({rec, jobs, done, sp .. 'succeeded', sp .. 'failed', sp .. 'canceled'}) do
    redis.call('PEXPIRE', k, ms)
  end
end
`;

/**
 * One job's terminal event. The job that completes the batch is recorded (`completedBy`): its hook,
 * and a re-run of it, are told to queue batch.completed until it is recorded as queued.
 * KEYS: record, done, jobs, the job's BullMQ hash. ARGV: jobId, status, costMicros, at (ms), retention (ms), status-set prefix.
 * Returns [changed (1 counted/moved, 0 already counted, -1 no such batch, -2 not a job of the batch), completion, needsWebhook].
 */
export const ACCOUNT_SCRIPT = `${LIB}
local rec, done, jobs, jobKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', rec) == 0 then return {-1, 0, 0} end
local changed = account(rec, done, jobs, ARGV[6], jobKey, ARGV[1], ARGV[2], ARGV[3])
local c = completion(rec, done, ARGV[4])
completedBy(rec, c, ARGV[1])
renew(rec, jobs, done, ARGV[6], ARGV[5])
return {changed, c, needsWebhook(rec, c, ARGV[1])}
`;

/**
 * storing → open once every job is in the queue; the batch may already be complete then.
 * KEYS: record, done. ARGV: at (ms). Returns [opened, completion, needsWebhook].
 */
export const OPEN_SCRIPT = `${LIB}
local rec, done = KEYS[1], KEYS[2]
if redis.call('HGET', rec, 'status') ~= 'storing' then return {0, 0, 0} end
redis.call('HSET', rec, 'status', 'open', 'openedAt', ARGV[1])
local c = completion(rec, done, ARGV[1])
completedBy(rec, c, '(open)')
return {1, c, needsWebhook(rec, c, nil)}
`;

/**
 * Cancel the jobs of a page that have not ended. A job still queued (prioritized, delayed, waiting,
 * paused) whose progress is what the caller read leaves its list and becomes a failed job with the
 * caller's progress record (canceledAt and the CANCELED error: GET /v1/jobs shows `canceled`), with
 * BullMQ's `failed` event, and is counted canceled in the same step. Returned for the caller to
 * cancel one by one (src/queue/cancel.ts) instead: active jobs (their worker must abort them) and
 * jobs whose progress changed meanwhile. (A job's own webhook sends nothing for a cancelled job, see
 * webhooks/outbox.ts, so the batch count is the only terminal hook a queued job needs; it runs in the
 * same step, so the counts add up whenever the request stops.) Jobs that ended without being counted (their
 * terminal hook never ran) and jobs removed from the queue are counted too, so the counts add up.
 *
 * KEYS: record, done, jobs, wait, paused, prioritized, delayed, active, failed, completed, events.
 * ARGV: job key prefix, status-set prefix, at (ms), retention (ms), events max length, failedReason,
 *       then per job: jobId, progress as read ('' for none), progress to write, costMicros.
 * Returns [canceled ids, ids for the caller, completion, needsWebhook].
 */
export const CANCEL_SCRIPT = `${LIB}
local rec, done, jobs = KEYS[1], KEYS[2], KEYS[3]
local wait, paused, prioritized, delayed, active, failed, completed, events =
  KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local qp, sp, at, retention, maxEvents, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local canceled, delegated = {}, {}
if redis.call('EXISTS', rec) == 0 then return {canceled, delegated, 0, 0} end
local i = 7
while i + 3 <= #ARGV do
  local jobId, expected, progress, cost = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if redis.call('HEXISTS', done, jobId) == 0 and redis.call('ZSCORE', jobs, jobId) then
    local jobKey = qp .. jobId
    if redis.call('EXISTS', jobKey) == 0 then
      account(rec, done, jobs, sp, jobKey, jobId, 'canceled', '0')
    elseif redis.call('ZSCORE', completed, jobId) then
      account(rec, done, jobs, sp, jobKey, jobId, 'succeeded', '0')
    elseif redis.call('ZSCORE', failed, jobId) then
      local p = redis.call('HGET', jobKey, 'progress') or ''
      local st = string.find(p, '"canceledAt"', 1, true) and 'canceled' or 'failed'
      account(rec, done, jobs, sp, jobKey, jobId, st, '0')
    elseif (redis.call('HGET', jobKey, 'progress') or '') ~= expected then
      table.insert(delegated, jobId)
    else
      local prev = 'prioritized'
      local removed = redis.call('ZREM', prioritized, jobId)
      if removed == 0 then prev = 'delayed'; removed = redis.call('ZREM', delayed, jobId) end
      if removed == 0 then prev = 'waiting'; removed = redis.call('LREM', wait, 0, jobId) end
      if removed == 0 then prev = 'paused'; removed = redis.call('LREM', paused, 0, jobId) end
      if removed > 0 then
        redis.call('HSET', jobKey, 'finishedOn', at, 'failedReason', reason, 'progress', progress)
        redis.call('HDEL', jobKey, 'defa')
        redis.call('ZADD', failed, at, jobId)
        redis.call('XADD', events, 'MAXLEN', '~', maxEvents, '*', 'event', 'failed', 'jobId', jobId,
          'failedReason', reason, 'prev', prev)
        account(rec, done, jobs, sp, jobKey, jobId, 'canceled', cost)
        table.insert(canceled, jobId)
      else
        -- active (or moving between states): its worker has to end it
        table.insert(delegated, jobId)
      end
    end
  end
end
local c = completion(rec, done, at)
completedBy(rec, c, '(cancel)')
renew(rec, jobs, done, sp, retention)
return {canceled, delegated, c, needsWebhook(rec, c, nil)}
`;

/**
 * Jobs of the batch running now (in BullMQ's active list) and waiting out a backoff or a 429
 * cooldown (in the delayed set), looking at no more than `cap` entries of each.
 * KEYS: jobs, done, active, delayed. ARGV: cap. Returns [running, retrying, exact (1/0)].
 */
export const INFLIGHT_SCRIPT = `
local jobs, done, active, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cap = tonumber(ARGV[1])
local running, retrying, exact = 0, 0, 1
for _, id in ipairs(redis.call('LRANGE', active, 0, cap - 1)) do
  if redis.call('ZSCORE', jobs, id) and redis.call('HEXISTS', done, id) == 0 then running = running + 1 end
end
if redis.call('LLEN', active) > cap then exact = 0 end
for _, id in ipairs(redis.call('ZRANGE', delayed, 0, cap - 1)) do
  if redis.call('ZSCORE', jobs, id) and redis.call('HEXISTS', done, id) == 0 then retrying = retrying + 1 end
end
if redis.call('ZCARD', delayed) > cap then exact = 0 end
return {running, retrying, exact}
`;

const shas = new Map<string, string>();

/** EVALSHA, falling back to EVAL the first time a server has not seen the script. */
export async function runScript(redis: Redis, script: string, keys: string[], args: (string | number)[]): Promise<unknown> {
  let sha = shas.get(script);
  if (!sha) {
    sha = createHash('sha1').update(script).digest('hex');
    shas.set(script, sha);
  }
  try {
    return await redis.evalsha(sha, keys.length, ...keys, ...args);
  } catch (err) {
    if (!(err instanceof Error) || !err.message.includes('NOSCRIPT')) throw err;
    return redis.eval(script, keys.length, ...keys, ...args);
  }
}
