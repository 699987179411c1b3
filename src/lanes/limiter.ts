/**
 * Shared model lanes: a dispatch gate per (model id, API key), kept in Redis and shared by every
 * worker of the fleet.
 *
 * Per lane, three things decide whether a call may start now:
 * - a GCRA limiter (generic cell rate algorithm: one "theoretical arrival time" per lane, a slot every
 *   60 000 / rpm ms, with a burst of LANE_BURST calls after an idle spell, or of one quota period's
 *   calls when the quota is known, as the provider's own bucket allows) whose rate is LEARNED from
 *   the upstream by AIMD: a lane with no known rate (no ceiling, no LANE_INITIAL_RPM) is not paced
 *   until its first 429, which sets its rate to the quota the 429 announced (QuotaFailure quotaValue
 *   per LANE_RATE_WINDOW, the provider's quota period) or, when it announced none, to
 *   LANE_AIMD_DECREASE × the rate it was dispatching at (calls admitted per LANE_RATE_WINDOW);
 *   then +LANE_AIMD_STEP_RPM per success while the limiter is what holds calls back (not above a
 *   quota announced within the last window),
 *   ×LANE_AIMD_DECREASE on a 429 (once per round: answers to calls sent before the last cut do not cut
 *   again; under a fresh announced quota, not for the first 429 of a window), never above the operator
 *   ceiling (MODEL_FAST_RPM / MODEL_PRO_RPM) nor below LANE_MIN_RPM. Every 429 also empties the GCRA's
 *   burst, as the provider's bucket is empty at that moment. A lane whose announced quota dropped
 *   (peak hours, a 429 storm) probes now and then for the earlier one;
 * - a closure (`closedUntil`): the RetryInfo delay of a 429 on this lane, or the next midnight in
 *   Los Angeles when the lane's per-day quota ran out;
 * - a cap on calls in flight across the fleet (LANE_MAX_INFLIGHT): a sorted set of lease ids scored by
 *   their expiry, so the slots of a crashed worker come back by themselves when the lease expires.
 * A key answered with 401/403 is taken out of rotation for LANE_AUTH_DISABLE_TTL (every lane of it).
 *
 * Redis keys (under {QUEUE_PREFIX}:pm):
 *   lane:{model}@{keyId}           hash: rpm, tat, closedUntil, closedReason, refusedAt, cutAt,
 *                                  winId, winCount, prevCount (admissions this rate window and the last),
 *                                  quota, quotaAt (the last announced quota, rpm), graceWin, quotaMax,
 *                                  dropAt, probeAt (the highest quota announced, since when it is lower, last probe),
 *                                  savedCalls, recoveredAt (calls to let through once a recovery holds)
 *   lane:{model}@{keyId}:inflight  zset: lease id → expiry (epoch ms)
 *   apikey:{keyId}:disabled        string: why the key was refused; PX LANE_AUTH_DISABLE_TTL
 *   waiting:{model}                zset: job id → its queue order (BullMQ priority), then arrival; jobs refused for rate
 *   waiting:{model}:until          zset: job id → when its entry lapses (its come-back time + grace)
 *   waiting:{model}:seq            counter: arrivals in the line
 *
 * The model-level RetryInfo cooldowns of state/model-state.ts stay: the processor only extends them
 * when every lane of the model is closed (closeLane's answer), so one key's 429 never stops the others.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { silentLogger, type Logger } from '../logging/logger.js';
import type { ModelFamily } from '../models/catalogue.js';
import { breakerKey } from '../health/health-store.js';
import { SharedRead } from '../state/shared-read.js';
import { geminiApiKeys, keyId, laneId } from './keys.js';

/**
 * A lane's bucket (GCRA burst), shared by the admission and the settling scripts: one quota period's
 * calls of the known quota (announced by a 429, else the operator ceiling), at least LANE_BURST; as
 * the provider's own bucket, after an idle spell that many go through at once.
 */
const BUCKET_OF_LUA = `
local function bucketOf(quota, burst, window)
  return math.max(burst, math.floor(quota * window / 60000))
end
`;

/** GCRA admission over every lane of one model; picks the lane with the earliest free slot. */
const ACQUIRE_LUA = `${BUCKET_OF_LUA}
-- KEYS  (4 per lane, lane i = 1..n, then the model's waiting line and its lapse times):
--   KEYS[4i-3]  lane state hash (rpm, tat, closedUntil, refusedAt, cutAt, winId, winCount, prevCount)
--   KEYS[4i-2]  lane in-flight sorted set (lease id scored by lease expiry, epoch ms)
--   KEYS[4i-1]  key-disabled flag of the lane's API key (exists = out of rotation)
--   KEYS[4i]    the lane's circuit breaker hash (src/health/health-store.ts: openUntil, probe, probeUntil)
-- ARGV
--   ARGV[1]  now, epoch ms
--   ARGV[2]  lease id to record when admitted
--   ARGV[3]  lease TTL ms (a crashed worker's slot comes back after it)
--   ARGV[4]  max in flight per lane across the fleet (0 = no cap)
--   ARGV[5]  starting rpm of a lane with no learned rate yet (0 = not paced until its first 429)
--   ARGV[6]  ceiling rpm (0 = none): a learned rate above it is clamped
--   ARGV[7]  burst: calls admitted back to back after an idle spell (>= 1); a lane with a known quota
--            (announced, or the ceiling) takes one quota period's calls (rate window) when that is more
--   ARGV[8]  ms to come back when a lane is at its in-flight cap (the end of a call is not predictable)
--   ARGV[9]  state TTL ms: a lane idle this long forgets its learned rate
--   ARGV[10] rate window ms (LANE_RATE_WINDOW): admissions are counted per window for the first 429
--   ARGV[11] the job asking ('' = none): admitted, it leaves the model's waiting line (WAITING_LUA)
-- Returns {status, lane index, wait ms, why, rpm, interval ms, probe}
--   status 1: admitted on lane <index> (lease recorded, tat advanced); probe 1 = the lane's breaker was
--             half-open and this lease is its one probe (the lease id is the probe token)
--   status 0: refused; lane <index> has the earliest free slot, in <wait ms>;
--             why = rate | inflight | closed | breaker
--   status -1: every lane's key is out of rotation
-- A lane whose breaker is open is not used until it may probe; a half-open one admits one probe at a
-- time (claimed here, in the same step as the admission, so two workers never both probe).
local now = tonumber(ARGV[1])
local maxInflight = tonumber(ARGV[4])
local startRpm = tonumber(ARGV[5])
local ceiling = tonumber(ARGV[6])
local burst = tonumber(ARGV[7])
local inflightRetry = tonumber(ARGV[8])
local best, bestAt, bestTat, bestWhy, bestRpm, bestProbe = nil, 0, 0, '', 0, false
for i = 1, math.floor(#KEYS / 4) do
  local h, z, d, b = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  if redis.call('EXISTS', d) == 0 then
    local f = redis.call('HMGET', h, 'tat', 'rpm', 'closedUntil', 'quota')
    local rpm = tonumber(f[2]) or startRpm
    if ceiling > 0 and (rpm == 0 or rpm > ceiling) then rpm = ceiling end
    local interval = 0
    if rpm > 0 then interval = 60000 / rpm end
    local laneBurst = bucketOf(tonumber(f[4]) or ceiling, burst, tonumber(ARGV[10]))
    local tat = math.max(tonumber(f[1]) or 0, now)
    local at = tat - interval * (laneBurst - 1)
    local why = 'rate'
    local closed = tonumber(f[3]) or 0
    if closed > at then at = closed; why = 'closed' end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    if maxInflight > 0 and redis.call('ZCARD', z) >= maxInflight and at < now + inflightRetry then
      at = now + inflightRetry; why = 'inflight'
    end
    local probe = false
    local br = redis.call('HMGET', b, 'openUntil', 'probeUntil')
    local openUntil = tonumber(br[1]) or 0
    if openUntil > now then
      if openUntil > at then at = openUntil; why = 'breaker' end
    elseif openUntil > 0 then
      if (tonumber(br[2]) or 0) > now then
        -- Another worker's probe is out: look again soon (it usually answers well before its expiry).
        if now + inflightRetry > at then at = now + inflightRetry; why = 'breaker' end
      else
        probe = true
      end
    end
    if best == nil or at < bestAt or (at == bestAt and tat < bestTat) then
      best, bestAt, bestTat, bestWhy, bestRpm, bestProbe = i, at, tat, why, rpm, probe
    end
  end
end
if best == nil then return {-1, 0, 0, '', '', 0, 0} end
local h, z = KEYS[4 * best - 3], KEYS[4 * best - 2]
local interval = 0
if bestRpm > 0 then interval = 60000 / bestRpm end
if bestAt > now then
  if bestWhy == 'rate' then redis.call('HSET', h, 'refusedAt', now) end
  return {0, best, math.ceil(bestAt - now), bestWhy, tostring(bestRpm), math.ceil(interval), 0}
end
redis.call('HSET', h, 'tat', tostring(bestTat + interval), 'rpm', tostring(bestRpm))
-- Admissions per rate window (this one and the last): what the first 429 learns the rate from.
local win = math.floor(now / tonumber(ARGV[10]))
local w = redis.call('HMGET', h, 'winId', 'winCount')
local winId, winCount = tonumber(w[1]) or -1, tonumber(w[2]) or 0
if winId ~= win then
  local prev = 0
  if winId == win - 1 then prev = winCount end
  redis.call('HSET', h, 'winId', win, 'winCount', 0, 'prevCount', prev)
end
redis.call('HINCRBY', h, 'winCount', 1)
redis.call('ZADD', z, now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', h, math.max(tonumber(ARGV[9]), (tonumber(redis.call('HGET', h, 'closedUntil') or '0')) - now + 1000))
redis.call('PEXPIRE', z, tonumber(ARGV[3]) + 1000)
if ARGV[11] ~= '' then
  redis.call('ZREM', KEYS[#KEYS - 1], ARGV[11])
  redis.call('ZREM', KEYS[#KEYS], ARGV[11])
end
if bestProbe then
  redis.call('HSET', KEYS[4 * best], 'probe', ARGV[2], 'probeUntil', now + tonumber(ARGV[3]))
  return {1, best, 0, '', tostring(bestRpm), math.ceil(interval), 1}
end
return {1, best, 0, '', tostring(bestRpm), math.ceil(interval), 0}
`;

/**
 * The line's come-backs are spaced a little closer than the lane's interval: a job that comes back a
 * moment late (its worker busy) must not leave a slot unused, so there is always someone ready; the
 * few that come early are refused and, first in line by then, come back for the next slot.
 */
const LINE_SPACING = 0.9;

/**
 * A job refused for rate takes its place in the model's waiting line and learns when to come back.
 *
 * Without it, every job refused in the same interval came back for the same next slot: one got it,
 * the others were refused again, so a saturated lane took each job out of Redis and put it back
 * dozens of times (26 times per job with 64 slots on one lane in bench:quota's draft run). Here the
 * job of rank r in the line (by queue order: a priority 1 job ranks before every priority 5 one) comes
 * back about r intervals after the next slot, when its turn comes. The line only spaces the come-backs:
 * it reserves nothing, so a job that finds its slot taken (a job of higher priority, or a slot lost to
 * a 429) is refused and asks again, keeping its place. An admitted job leaves the line; an entry also
 * lapses `grace` ms after its come-back time, so jobs that went elsewhere (spill-over, cancelled,
 * failed) leave it by themselves.
 */
const WAITING_LUA = `
-- KEYS[1] waiting line (job id → queue order, then arrival)   KEYS[2] lapse times (job id → epoch ms)
-- KEYS[3] arrival counter   KEYS[4] the refusing lane's state hash (rpm, quotaMax)
-- ARGV: now, job id, queue order (0 .. 2^21), next slot (epoch ms), interval ms, grace ms,
--       API keys of the model (lanes serving the line), ceiling rpm (0 = none)
-- The spacing is the interval of the best rate the lane has known: during a drop (a 429 storm, peak
-- hours) the line keeps the pace of the earlier quota, so when that comes back the jobs are already
-- coming back at its pace; meanwhile the ones that come early are refused and keep their place.
-- Returns the come-back time (epoch ms). Among jobs of one queue order, the one that joined first
-- ranks first; a job keeps its place until it is admitted (ACQUIRE_LUA takes it out) or its entry lapses.
local now = tonumber(ARGV[1])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
if #lapsed > 0 then
  redis.call('ZREM', KEYS[1], unpack(lapsed))
  redis.call('ZREM', KEYS[2], unpack(lapsed))
end
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  local arrival = redis.call('INCR', KEYS[3]) % 2147483648
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) * 2147483648 + arrival, ARGV[2])
end
local rank = redis.call('ZRANK', KEYS[1], ARGV[2])
local interval = tonumber(ARGV[5])
local lane = redis.call('HMGET', KEYS[4], 'rpm', 'quotaMax')
local best = math.max(tonumber(lane[1]) or 0, tonumber(lane[2]) or 0)
local ceiling = tonumber(ARGV[8])
if ceiling > 0 and best > ceiling then best = ceiling end
if best > 0 then interval = math.min(interval, 60000 / best) end
local at = tonumber(ARGV[4]) + rank * interval / tonumber(ARGV[7]) * ${LINE_SPACING}
local untilMs = at + tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], untilMs, ARGV[2])
local ttl = math.ceil(untilMs - now) + 1000
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return tostring(at)
`;

/** Release a lease and feed the outcome back into the lane's rate (AIMD). */
const SETTLE_LUA = `${BUCKET_OF_LUA}
-- KEYS
--   KEYS[1]  lane state hash
--   KEYS[2]  lane in-flight sorted set
-- ARGV
--   ARGV[1]  lease id (removed from the in-flight set)
--   ARGV[2]  outcome: succeeded | rate_limited | other
--   ARGV[3]  now, epoch ms
--   ARGV[4]  when the lease was acquired, epoch ms
--   ARGV[5]  starting rpm (lane with no learned rate; 0 = not paced until its first 429)
--   ARGV[6]  ceiling rpm (0 = none)
--   ARGV[7]  floor rpm
--   ARGV[8]  additive step, rpm per success
--   ARGV[9]  multiplicative factor on 429 (0 < f < 1)
--   ARGV[10] state TTL ms
--   ARGV[11] rate window ms (LANE_RATE_WINDOW)
--   ARGV[12] the quota this 429 announced, in rpm (QuotaFailure quotaValue; 0 = none)
--   ARGV[13] burst (LANE_BURST)
-- An announced quota is the lane's real ceiling: the rate is set to it (never cut below it for the
-- same news), and the increase stops at it while it is fresh (announced within the last rate window);
-- after a quiet window the lane probes above it again, since quotas also rise: a lane that first met
-- its quota at peak hours has no earlier quota to probe for (see the drop probes below).
-- Increase only while the limiter holds calls back (a refusal for rate in the last window, or the
-- schedule running ahead of now): a lane that is idle or held back by its in-flight cap learns nothing.
-- Decrease at most once per round: a 429 to a call acquired before the last cut does not cut again.
-- Under a fresh announced quota the first 429 of a window does not cut: at that rate it is a call that
-- arrived a moment early, not a lower quota; a second one in the same window cuts as usual (another
-- client shares the project's quota).
-- A lane whose announced quota dropped probes for the earlier one (see the success branch).
-- Any 429 says the provider's bucket is empty now: the schedule moves so the next slot is one interval
-- away, with no burst left.
-- Returns the lane's rpm after the update (string).
redis.call('ZREM', KEYS[2], ARGV[1])
local now = tonumber(ARGV[3])
local window = tonumber(ARGV[11])
local win = math.floor(now / window)
local announced = tonumber(ARGV[12]) or 0
local f = redis.call('HMGET', KEYS[1], 'rpm', 'tat', 'refusedAt', 'cutAt', 'winId', 'winCount', 'prevCount', 'quota', 'quotaAt', 'graceWin',
  'quotaMax', 'dropAt', 'probeAt', 'savedCalls', 'recoveredAt')
local rpm = tonumber(f[1]) or tonumber(ARGV[5])
local oldRpm = rpm
local probeSlot = false
-- A probe found the earlier quota back; catchUp: calls to let through at once (the tokens the provider saved).
local recovered, catchUp = false, 0
local savedCalls = tonumber(f[14]) or 0
local ceiling = tonumber(ARGV[6])
local limited = ARGV[2] == 'rate_limited'
-- Any 429 calls off a catch-up still waiting for its recovery to hold.
if limited and savedCalls > 0 then
  savedCalls = 0
  redis.call('HDEL', KEYS[1], 'savedCalls', 'recoveredAt')
end
local quotaMax, dropAt = tonumber(f[11]) or 0, tonumber(f[12])
if announced > 0 then
  redis.call('HSET', KEYS[1], 'quota', tostring(announced), 'quotaAt', now)
  if announced >= quotaMax then
    quotaMax, dropAt = announced, nil
    redis.call('HSET', KEYS[1], 'quotaMax', tostring(announced))
    redis.call('HDEL', KEYS[1], 'dropAt')
  elseif dropAt == nil then
    dropAt = now
    redis.call('HSET', KEYS[1], 'dropAt', now)
  end
end
-- The quota announced by this 429 or within the last window (0 = none fresh).
local fresh = announced
if fresh == 0 and (tonumber(f[9]) or -1) >= now - window then fresh = tonumber(f[8]) or 0 end
if rpm == 0 then
  -- Not paced yet: nothing to raise; the first 429 starts from the announced quota, or else from the
  -- rate the lane was dispatching at.
  if not limited then return '0' end
  if fresh > 0 then
    rpm = fresh
  else
    local winCount, prevCount = tonumber(f[6]) or 0, tonumber(f[7]) or 0
    local observed = 0
    if tonumber(f[5]) == win then
      observed = winCount + prevCount * (1 - (now % window) / window)
    elseif tonumber(f[5]) == win - 1 then
      observed = winCount * (1 - (now % window) / window)
    end
    -- The upstream let \`observed\` calls through within one window: that many per window, per minute.
    rpm = observed * (60000 / window) * tonumber(ARGV[9])
  end
  redis.call('HSET', KEYS[1], 'cutAt', now)
elseif ARGV[2] == 'succeeded' then
  local busy = (tonumber(f[3]) or -1) >= now - window or (tonumber(f[2]) or 0) >= now
  -- After a drop (a lower quota announced than before: peak hours, a 429 storm), probe now and then
  -- whether the earlier quota is back: one call beyond the pace. Its 429 (back within a round trip)
  -- says the quota is still low, at the cost of that one call; no 429 by the time two slots have
  -- passed (and at least 1/60 window, a round trip) says the provider had a token to spare, and the
  -- rate returns to the earlier quota (a 429 then sets it down to what is announced). Probes are
  -- spaced by an eighth of the drop's age (at least a quarter window): a short storm ends within
  -- seconds of being noticed, a long peak costs few.
  -- The quota came back somewhere between the last 429 and the probe; from then on the provider's
  -- bucket filled at the earlier quota while the lane paced at the lower one. Paced at exactly the
  -- quota, the lane would never use those saved calls, so they go out at once (taking the midpoint as
  -- the moment it came back), but only once the earlier rate has held for a moment without a 429:
  -- a probe also gets through when the provider merely had one token to spare, and that false news
  -- must cost a 429 or two at the earlier rate, not a burst of them.
  local probeAt, quotaAt = tonumber(f[13]) or 0, tonumber(f[9]) or 0
  local every = dropAt and math.max(window / 4, (now - dropAt) / 8) or 0
  local recoveredAt = tonumber(f[15]) or 0
  if savedCalls > 0 and now - recoveredAt >= math.max(4 * 60000 / rpm, window / 30) then
    catchUp = savedCalls
    redis.call('HDEL', KEYS[1], 'savedCalls', 'recoveredAt')
  elseif busy and dropAt and rpm < quotaMax and probeAt > quotaAt and now - probeAt >= math.max(2 * 60000 / rpm, window / 60) then
    local saved = math.floor((quotaMax - rpm) * math.max(0, now - (quotaAt + probeAt) / 2) / 60000)
    rpm = quotaMax
    recovered = true
    redis.call('HSET', KEYS[1], 'probeAt', 0, 'quota', tostring(quotaMax), 'quotaAt', now, 'savedCalls', saved, 'recoveredAt', now)
    redis.call('HDEL', KEYS[1], 'dropAt')
  elseif busy and dropAt and rpm < quotaMax and probeAt <= quotaAt and now - math.max(probeAt, quotaAt) >= every then
    probeSlot = true
    redis.call('HSET', KEYS[1], 'probeAt', now)
  elseif busy and (fresh == 0 or rpm < fresh) then
    -- A lane that has heard a quota before (not within the window) climbs by a tenth per success, not
    -- by a step: overshooting costs one 429, which names the quota again. A lane that first met its
    -- quota at peak hours (no earlier one to probe for) finds the off-peak one within a few dozen calls.
    -- After a drop the probes above look for the earlier quota; the step alone meanwhile.
    local step = tonumber(ARGV[8])
    if fresh == 0 and not dropAt and (tonumber(f[8]) or 0) > 0 then step = math.max(step, rpm / 10) end
    rpm = math.min(rpm + step, fresh > 0 and fresh or math.huge)
  end
elseif limited and tonumber(ARGV[4]) >= (tonumber(f[4]) or 0) then
  if fresh > 0 and rpm > fresh then
    rpm = fresh
    redis.call('HSET', KEYS[1], 'cutAt', now)
  elseif fresh > 0 and tonumber(f[10]) ~= win then
    redis.call('HSET', KEYS[1], 'graceWin', win)
  else
    rpm = rpm * tonumber(ARGV[9])
    redis.call('HSET', KEYS[1], 'cutAt', now)
  end
end
if ceiling > 0 and rpm > ceiling then rpm = ceiling end
if rpm < tonumber(ARGV[7]) then rpm = tonumber(ARGV[7]) end
-- The bucket (bucketOf, as the admission's) before and after this answer's news.
local quotaBefore = tonumber(f[8]) or ceiling
local quotaAfter = quotaBefore
if announced > 0 then quotaAfter = announced end
if recovered then quotaAfter = quotaMax end
local bucketBefore = bucketOf(quotaBefore, tonumber(ARGV[13]), window)
local bucketAfter = bucketOf(quotaAfter, tonumber(ARGV[13]), window)
-- The schedule ahead of now was booked at the old interval and bucket: keep the number of slots
-- booked beyond the bucket, not the schedule's length, so a rate that rises takes effect at once
-- (and a cut pushes it out); a bucket that grows starts with the calls it had, not full.
local tat = tonumber(f[2]) or 0
if oldRpm > 0 and (rpm ~= oldRpm or bucketAfter ~= bucketBefore) then
  local booked = (math.max(tat, now) - now) / (60000 / oldRpm) - (bucketBefore - 1)
  tat = math.max(now, now + (booked + bucketAfter - 1) * (60000 / rpm))
end
if limited then
  local empty = now + (60000 / rpm) * bucketAfter
  if tat < empty then tat = empty end
end
if catchUp > 0 then tat = math.min(tat, now + (bucketAfter - math.min(catchUp, bucketAfter)) * (60000 / rpm)) end
-- A probe: one slot now, beyond the pace.
if probeSlot then tat = math.max(now - (60000 / rpm) * (bucketAfter - 1), tat - 60000 / rpm) end
if tat ~= (tonumber(f[2]) or 0) then redis.call('HSET', KEYS[1], 'tat', tostring(tat)) end
redis.call('HSET', KEYS[1], 'rpm', tostring(rpm))
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[10]), (tonumber(redis.call('HGET', KEYS[1], 'closedUntil') or '0')) - now + 1000))
return tostring(rpm)
`;

/** Close one lane until a time (never shortens a closure); answer when the model is next open anywhere. */
const CLOSE_LUA = `
-- KEYS
--   KEYS[1]        the lane to close: its state hash
--   KEYS[2k], KEYS[2k+1] (k = 1..n)  state hash and key-disabled flag of every lane of the model (this one included)
-- ARGV
--   ARGV[1]  closed until, epoch ms
--   ARGV[2]  now, epoch ms
--   ARGV[3]  reason (short text, shown in the lanes view)
--   ARGV[4]  state TTL ms
-- Returns the earliest epoch ms at which an enabled lane of the model is open (<= now: one is open
-- now), or -1 when every lane's key is out of rotation.
local now = tonumber(ARGV[2])
local untilMs = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'closedUntil') or '0')
if untilMs > current then
  redis.call('HSET', KEYS[1], 'closedUntil', ARGV[1], 'closedReason', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[4]), untilMs - now + 1000))
end
local soonest = -1
for k = 1, (#KEYS - 1) / 2 do
  if redis.call('EXISTS', KEYS[2 * k + 1]) == 0 then
    local c = math.max(tonumber(redis.call('HGET', KEYS[2 * k], 'closedUntil') or '0'), now)
    if soonest < 0 or c < soonest then soonest = c end
  end
end
return soonest
`;

/** A lane's state, for the admin view and /readyz details. No key in clear. */
export interface LaneView {
  lane: string;
  model: string;
  keyId: string;
  /** The rate in force (learned, clamped to the ceiling); null = not paced yet (no 429 seen, no ceiling). */
  rpm: number | null;
  ceilingRpm: number | null;
  inFlight: number;
  /** ISO time until which the lane is closed (429 RetryInfo or per-day quota), when it is. */
  closedUntil?: string;
  closedReason?: string;
  /** Why the key is out of rotation (401/403), when it is. */
  keyDisabled?: string;
}

/** Proof of a dispatch slot: hand it back with settle() once the call ended, whatever happened. */
export interface LaneLease {
  readonly lane: string;
  readonly modelId: string;
  readonly keyId: string;
  /** The key to call with (GenerateImageRequest.apiKey). Never log it. */
  readonly apiKey: string;
  readonly leaseId: string;
  readonly acquiredAt: number;
  readonly rpm: number;
  /** Set when this call is the probe of the lane's half-open breaker: pass it to HealthStore.recordOutcome. */
  readonly probeToken?: string;
}

export type AcquireAnswer =
  | { kind: 'admitted'; lease: LaneLease }
  | { kind: 'refused'; lane: string; waitMs: number; why: 'rate' | 'inflight' | 'closed' | 'breaker'; rpm: number; intervalMs: number }
  | { kind: 'no-keys' };

/** A refusal the processor acts on: when to look again, and why. */
export type LaneWait = Extract<LaneGate, { kind: 'wait' }>;

/** What the processor does next: call now, go back to Redis until `untilMs`, or give up (no usable key). */
export type LaneGate =
  | { kind: 'go'; lease: LaneLease; waitedMs: number }
  | {
    kind: 'wait'; untilMs: number; waitMs: number; reason: string; rpm: number; why: 'rate' | 'inflight' | 'closed' | 'breaker';
    /** The next slot itself (untilMs is later by a herd jitter of less than an interval), and the lane's interval. */
    slotAt: number; intervalMs: number; lane: string;
  }
  | { kind: 'no-keys'; reason: string };

export type LaneOutcome = 'succeeded' | 'rate_limited' | 'other';

export interface LaneOptions {
  /** Every API key (GEMINI_API_KEY split on commas); [''] for no key. */
  apiKeys: readonly string[];
  familyOf: (modelId: string) => ModelFamily;
  /** Operator ceilings per family (MODEL_FAST_RPM, MODEL_PRO_RPM); undefined = learn only. */
  ceilingRpm: Readonly<Record<ModelFamily, number | undefined>>;
  /** Starting rate without a ceiling; 0 = not paced until the lane's first 429. */
  initialRpm: number;
  minRpm: number;
  stepRpm: number;
  decreaseFactor: number;
  /** The provider's quota period (LANE_RATE_WINDOW): the first 429 learns calls per window. */
  rateWindowMs: number;
  burst: number;
  /** 0 = no fleet-wide cap. */
  maxInflight: number;
  /** Waits up to this long are slept in-process; longer ones send the job back to Redis. */
  maxHoldMs: number;
  leaseTtlMs: number;
  inflightRetryMs: number;
  authDisableTtlMs: number;
  stateTtlMs: number;
}

export function laneOptionsFromConfig(config: Config): LaneOptions {
  return {
    apiKeys: geminiApiKeys(config.GEMINI_API_KEY),
    familyOf: (id) => (config.MODEL_PRO.includes(id) ? 'pro' : 'fast'),
    ceilingRpm: { fast: config.MODEL_FAST_RPM, pro: config.MODEL_PRO_RPM },
    initialRpm: config.LANE_INITIAL_RPM ?? 0,
    minRpm: config.LANE_MIN_RPM,
    stepRpm: config.LANE_AIMD_STEP_RPM,
    decreaseFactor: config.LANE_AIMD_DECREASE,
    rateWindowMs: config.LANE_RATE_WINDOW,
    burst: config.LANE_BURST,
    maxInflight: config.LANE_MAX_INFLIGHT ?? 0,
    maxHoldMs: config.LANE_MAX_HOLD_MS,
    // A lease outlives the longest call it covers; then it is reclaimed.
    leaseTtlMs: config.UPSTREAM_TIMEOUT_MS + 30_000,
    inflightRetryMs: 1_000,
    authDisableTtlMs: config.LANE_AUTH_DISABLE_TTL,
    stateTtlMs: 86_400_000,
  };
}

type LaneRedis = Redis & {
  pmLaneAcquire(...args: (string | number)[]): Promise<[number, number, number, string, string, number, number]>;
  pmLaneSettle(...args: (string | number)[]): Promise<string>;
  pmLaneClose(...args: (string | number)[]): Promise<number>;
  pmLaneWaiting(...args: (string | number)[]): Promise<string>;
};

export interface LaneLimiterDeps {
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
  logger?: Logger;
}

export class LaneLimiter {
  private readonly redis: LaneRedis;
  private readonly prefix: string;
  private readonly queuePrefix: string;
  private readonly keys: readonly { apiKey: string; id: string }[];
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly random: () => number;
  private readonly logger: Logger;
  /** knownRpm's reads, shared for 250 ms per model. */
  private readonly rates: SharedRead<number>;

  constructor(redis: Redis, queuePrefix: string, readonly options: LaneOptions, deps: LaneLimiterDeps = {}) {
    this.redis = redis as LaneRedis;
    this.prefix = `${queuePrefix}:pm`;
    this.queuePrefix = queuePrefix;
    this.keys = options.apiKeys.map((apiKey) => ({ apiKey, id: keyId(apiKey) }));
    this.now = deps.now ?? Date.now;
    this.sleep = deps.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.random = deps.random ?? Math.random;
    this.logger = deps.logger ?? silentLogger();
    this.rates = new SharedRead(250, this.now);
    redis.defineCommand('pmLaneAcquire', { lua: ACQUIRE_LUA });
    redis.defineCommand('pmLaneSettle', { numberOfKeys: 2, lua: SETTLE_LUA });
    redis.defineCommand('pmLaneClose', { lua: CLOSE_LUA });
    redis.defineCommand('pmLaneWaiting', { numberOfKeys: 4, lua: WAITING_LUA });
  }

  /** One admission try, no waiting: a lease, or the lane with the earliest free slot and how long until it. */
  async tryAcquire(modelId: string, leaseId: string = randomUUID(), owner = ''): Promise<AcquireAnswer> {
    const o = this.options;
    const now = this.now();
    const laneKeys = this.keys.flatMap((k) => [
      this.stateKey(modelId, k.id), this.inflightKey(modelId, k.id), this.disabledKey(k.id), breakerKey(this.queuePrefix, laneId(modelId, k.id)),
    ]);
    laneKeys.push(this.waitingKey(modelId), `${this.waitingKey(modelId)}:until`);
    const [status, index, waitMs, why, rpm, intervalMs, probe] = await this.redis.pmLaneAcquire(
      laneKeys.length, ...laneKeys,
      now, leaseId, o.leaseTtlMs, o.maxInflight, this.startRpm(modelId), this.ceiling(modelId) ?? 0, o.burst, o.inflightRetryMs, o.stateTtlMs,
      o.rateWindowMs, owner,
    );
    if (status === -1) return { kind: 'no-keys' };
    const key = this.keys[index - 1]!;
    const lane = laneId(modelId, key.id);
    if (status === 0) return { kind: 'refused', lane, waitMs, why: why as 'rate' | 'inflight' | 'closed' | 'breaker', rpm: Number(rpm), intervalMs };
    return {
      kind: 'admitted',
      lease: { lane, modelId, keyId: key.id, apiKey: key.apiKey, leaseId, acquiredAt: now, rpm: Number(rpm), ...(Number(probe) === 1 ? { probeToken: leaseId } : {}) },
    };
  }

  /**
   * A dispatch slot for `modelId` on the lane with the earliest free slot. Waits of at most
   * LANE_MAX_HOLD_MS are slept here; a longer one answers 'wait' so the job goes back to Redis
   * (untilMs carries a little jitter so the jobs refused together do not all come back together).
   */
  async acquire(modelId: string, owner: string): Promise<LaneGate> {
    const started = this.now();
    for (let round = 0; ; round++) {
      const a = await this.tryAcquire(modelId, `${owner}:${randomUUID().slice(0, 8)}`, owner);
      if (a.kind === 'admitted') return { kind: 'go', lease: a.lease, waitedMs: this.now() - started };
      if (a.kind === 'no-keys') {
        return { kind: 'no-keys', reason: `every API key is out of rotation for ${modelId} (refused with 401/403)` };
      }
      // A bounded number of short sleeps: a clock that does not move (tests) must not spin forever.
      if (a.waitMs <= this.options.maxHoldMs && round < 8) {
        await this.sleep(a.waitMs);
        continue;
      }
      const jitter = Math.floor(this.random() * Math.min(a.intervalMs, a.waitMs));
      const slotAt = this.now() + a.waitMs;
      return {
        kind: 'wait', untilMs: slotAt + jitter, slotAt, waitMs: a.waitMs, rpm: a.rpm, why: a.why, intervalMs: a.intervalMs, lane: a.lane,
        reason: `lane ${modelId} full (${a.why}), next slot in ${a.waitMs} ms`,
      };
    }
  }

  /**
   * When a job refused for rate (`gate.why === 'rate'`) should come back: its turn in the model's
   * waiting line (WAITING_LUA), `order` being its queue order (lower goes first). The spacing is the
   * interval of the lane's best known rate, divided over the model's API keys (each key's lane serves
   * the line). Only for rate: a closed lane reopens with its burst, so its waiters all come back at once.
   */
  async comeBackAt(modelId: string, jobId: string, order: number, gate: Pick<LaneWait, 'slotAt' | 'untilMs' | 'intervalMs' | 'lane'>): Promise<number> {
    // From the slot itself: the line spaces its jobs, a herd jitter on top would leave slots unused.
    const slotAt = gate.slotAt;
    const grace = Math.max(2 * gate.intervalMs, this.options.maxHoldMs, 1_000);
    const key = this.waitingKey(modelId);
    const at = Number(await this.redis.pmLaneWaiting(
      key, `${key}:until`, `${key}:seq`, `${this.prefix}:lane:${gate.lane}`,
      this.now(), jobId, Math.max(0, Math.min(order, 2 ** 21)), Math.round(slotAt), gate.intervalMs, Math.round(grace),
      this.keys.length, this.ceiling(modelId) ?? 0,
    ));
    return Number.isFinite(at) ? Math.round(at) : gate.untilMs;
  }

  /**
   * Release the lease and feed the outcome into the lane's learned rate. Returns the new rpm.
   * `announcedQuota`: the requests per quota period a 429 announced (QuotaFailure quotaValue); the
   * period is LANE_RATE_WINDOW (a minute in production, scaled in the benchmarks).
   */
  async settle(lease: LaneLease, outcome: LaneOutcome, announcedQuota?: number): Promise<number> {
    const o = this.options;
    const announcedRpm = announcedQuota !== undefined && announcedQuota > 0 ? announcedQuota * (60_000 / o.rateWindowMs) : 0;
    const rpm = Number(await this.redis.pmLaneSettle(
      this.stateKey(lease.modelId, lease.keyId), this.inflightKey(lease.modelId, lease.keyId),
      lease.leaseId, outcome, this.now(), lease.acquiredAt, this.startRpm(lease.modelId), this.ceiling(lease.modelId) ?? 0,
      o.minRpm, o.stepRpm, o.decreaseFactor, o.stateTtlMs, o.rateWindowMs, announcedRpm, o.burst,
    ));
    if (outcome === 'rate_limited') {
      this.logger.info({ lane: lease.lane, rpm, ...(announcedRpm > 0 ? { announcedRpm } : {}) }, 'lane answered 429: rate set');
    }
    return rpm;
  }

  /**
   * Close the lease's lane until `untilMs` (a 429's RetryInfo, or midnight Los Angeles for a per-day
   * quota). Returns when the model is next open on any usable lane: <= now means another lane is open
   * now, so the model as a whole must not cool down; -1 means no key is left.
   */
  async closeLane(lease: LaneLease, untilMs: number, reason: string): Promise<number> {
    const keys = [this.stateKey(lease.modelId, lease.keyId), ...this.keys.flatMap((k) => [this.stateKey(lease.modelId, k.id), this.disabledKey(k.id)])];
    const soonest = Number(await this.redis.pmLaneClose(keys.length, ...keys, Math.round(untilMs), this.now(), reason.slice(0, 200), this.options.stateTtlMs));
    this.logger.info({ lane: lease.lane, closedUntil: new Date(untilMs).toISOString(), reason }, 'lane closed');
    return soonest;
  }

  /**
   * Take the lease's key out of rotation (401/403), for every model, for LANE_AUTH_DISABLE_TTL.
   * Returns whether another key remains in rotation (then the job may try it at once).
   */
  async disableKey(lease: LaneLease, reason: string): Promise<boolean> {
    await this.redis.set(this.disabledKey(lease.keyId), reason.slice(0, 300), 'PX', this.options.authDisableTtlMs);
    this.logger.error({ keyId: lease.keyId, reason }, 'API key refused by the provider: out of rotation');
    const others = this.keys.filter((k) => k.id !== lease.keyId);
    if (others.length === 0) return false;
    const exists = await this.redis.exists(...others.map((k) => this.disabledKey(k.id)));
    return exists < others.length;
  }

  /**
   * The rate in force over every lane of a model (the sum over its API keys), calls per minute; 0 when
   * none is paced yet (no 429, no ceiling). Read at most once per 250 ms per model and worker.
   */
  knownRpm(modelId: string): Promise<number> {
    return this.rates.get(modelId, async () => {
      const rates = await Promise.all(this.keys.map((k) => this.redis.hget(this.stateKey(modelId, k.id), 'rpm')));
      return rates.reduce((sum, raw) => sum + this.rateInForce(modelId, raw), 0);
    });
  }

  /** The lane ids of a model, one per API key (HealthStore's lanesOf: its breakers are per lane). */
  laneIdsOf(modelId: string): string[] {
    return this.keys.map((k) => laneId(modelId, k.id));
  }

  /** Every lane of the given models, for /v1/lanes and /readyz details. */
  async view(modelIds: readonly string[]): Promise<LaneView[]> {
    const now = this.now();
    const pipe = this.redis.multi();
    const lanes = modelIds.flatMap((modelId) => this.keys.map((k) => ({ modelId, k })));
    for (const { modelId, k } of lanes) {
      pipe.hmget(this.stateKey(modelId, k.id), 'rpm', 'closedUntil', 'closedReason');
      pipe.zcount(this.inflightKey(modelId, k.id), `(${now}`, '+inf');
      pipe.get(this.disabledKey(k.id));
    }
    const res = (await pipe.exec()) ?? [];
    return lanes.map(({ modelId, k }, i) => {
      const [rpmRaw, closedRaw, closedReason] = res[3 * i]?.[1] as (string | null)[];
      const disabled = res[3 * i + 2]?.[1] as string | null;
      const ceiling = this.ceiling(modelId);
      const inForce = this.rateInForce(modelId, rpmRaw ?? null);
      const closedUntil = Number(closedRaw ?? 0);
      return {
        lane: laneId(modelId, k.id), model: modelId, keyId: k.id,
        rpm: inForce === 0 ? null : Math.round(inForce * 100) / 100,
        ceilingRpm: ceiling ?? null,
        inFlight: Number(res[3 * i + 1]?.[1] ?? 0),
        ...(closedUntil > now ? { closedUntil: new Date(closedUntil).toISOString(), closedReason: closedReason ?? '' } : {}),
        ...(disabled !== null && disabled !== undefined ? { keyDisabled: disabled } : {}),
      };
    });
  }

  /** A lane's rate in force from its stored rpm (null = none yet): learned or starting, clamped to the ceiling; 0 = unpaced. */
  private rateInForce(modelId: string, rpmRaw: string | null): number {
    const ceiling = this.ceiling(modelId);
    const learned = rpmRaw !== null ? Number(rpmRaw) : this.startRpm(modelId);
    return ceiling !== undefined && (learned === 0 || learned > ceiling) ? ceiling : learned;
  }

  private ceiling(modelId: string): number | undefined {
    return this.options.ceilingRpm[this.options.familyOf(modelId)];
  }

  /** A known quota starts at its ceiling; otherwise at LANE_INITIAL_RPM (0 = not paced until the first 429). */
  private startRpm(modelId: string): number {
    return this.ceiling(modelId) ?? this.options.initialRpm;
  }

  private stateKey(modelId: string, apiKeyId: string): string {
    return `${this.prefix}:lane:${laneId(modelId, apiKeyId)}`;
  }

  private inflightKey(modelId: string, apiKeyId: string): string {
    return `${this.stateKey(modelId, apiKeyId)}:inflight`;
  }

  private waitingKey(modelId: string): string {
    return `${this.prefix}:waiting:${modelId}`;
  }

  private disabledKey(apiKeyId: string): string {
    return `${this.prefix}:apikey:${apiKeyId}:disabled`;
  }
}

/**
 * The lane ids of a model under this configuration (one per API key), for HealthStore's per-lane
 * breakers; undefined when LANES_ENABLED=false (a model's breaker is then its own).
 */
export function laneIdsFromConfig(config: Config): ((modelId: string) => string[]) | undefined {
  if (!config.LANES_ENABLED) return undefined;
  const ids = geminiApiKeys(config.GEMINI_API_KEY).map(keyId);
  return (modelId) => ids.map((id) => laneId(modelId, id));
}

/** The fleet's lane limiter from configuration, or undefined when LANES_ENABLED=false. */
export function createLaneLimiter(redis: Redis, config: Config, deps: LaneLimiterDeps = {}): LaneLimiter | undefined {
  if (!config.LANES_ENABLED) return undefined;
  return new LaneLimiter(redis, config.QUEUE_PREFIX, laneOptionsFromConfig(config), deps);
}

/**
 * Run one upstream call on a lease: whatever happens, the in-flight slot is released when the call
 * ends and the outcome feeds the lane's rate (success → increase, RATE_LIMITED → decrease, or the
 * quota the 429 announced). A lane bookkeeping failure never hides the call's own result or error.
 */
export async function withLane<T>(lanes: LaneLimiter | undefined, lease: LaneLease | undefined, call: () => Promise<T>): Promise<T> {
  if (!lanes || !lease) return call();
  let outcome: LaneOutcome = 'other';
  let announced: number | undefined;
  try {
    const result = await call();
    outcome = 'succeeded';
    return result;
  } catch (err) {
    const e = err as { code?: unknown; details?: { requestsPerMinute?: unknown } } | null;
    if (e?.code === 'RATE_LIMITED') {
      outcome = 'rate_limited';
      if (typeof e.details?.requestsPerMinute === 'number') announced = e.details.requestsPerMinute;
    }
    throw err;
  } finally {
    await lanes.settle(lease, outcome, announced).catch(() => undefined);
  }
}
