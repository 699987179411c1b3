/**
 * A job's life in the worker: validate → route → generate → store, with every outcome classified by
 * the error catalogue and turned into one of four moves:
 *
 *   try again now    another candidate within the same attempt (429 with a fallback, a retired id,
 *                    a content block on Nano Banana 2 for a standard job, the one NO_IMAGE retry)
 *   requeue          every candidate is cooling down or its lane is full: moveToDelayed until the
 *                    shortest cooldown or the next slot, without consuming an attempt (DelayedError);
 *                    when the lanes of both models are full, the fleet instead stops taking jobs until
 *                    the next slot and this one goes back to the queue where it was (RateLimitError)
 *   retry            timeouts, 5xx, unreadable bodies, storage: throw, and BullMQ retries after the
 *                    full-jitter backoff while attempts remain (the router then prefers the other model)
 *   fail             everything final: UnrecoverableError, the code kept on the job's progress
 *
 * Redis only ever sees small facts: the progress record and the result hold keys, counts and text.
 */
import { DelayedError, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Config } from '../config/env.js';
import { PixelmillError, toPixelmillError, type ErrorCode } from '../errors/catalogue.js';
import {
  appendHistory, readProgress, storedJobDataSchema, type HistoryEntry, type JobProgress, type JobResult, type StoredJobData, type Usage,
} from '../jobs/record.js';
import type { Logger } from '../logging/logger.js';
import { FAMILY_LABEL, LATENCY_SECONDS, pixelSize, supports, type ModelFamily } from '../models/catalogue.js';
import { costFromUsage } from '../models/pricing.js';
import type { GeneratedImage, ImageGenerator } from '../providers/gemini/types.js';
import { runTerminalHooks, type TerminalHook } from '../jobs/terminal.js';
import { route, type Candidate, type RoutingPolicy } from '../routing/router.js';
import { nextMidnight, type ModelStateStore } from '../state/model-state.js';
import { outputKey, tenantMetadata, type ObjectStore } from '../storage/object-store.js';
import { cooldownJitter } from './backoff.js';
import { UNLIMITED_BUDGETS, type BudgetGate } from '../budget/budgets.js';
import { DEGRADED_OUTCOME, decideDegraded, degradedActionFor, describeDegradation, preferUndegraded } from './output-check.js';
import { withLane, type LaneLease, type LaneLimiter, type LaneWait } from '../lanes/limiter.js';
import { decideShare, decideSpill } from '../lanes/spill.js';
import type { HealthStore } from '../health/health-store.js';
import type { BacklogReader } from '../queue/backlog.js';
import type { AnswerGate } from './answer-gate.js';
import type { TurnPacer } from './turn-pacer.js';

/**
 * Longest fleet-wide pause of job fetching when every lane is full: a lane closed for hours (per-day
 * quota) is looked at again this often rather than trusted for the whole closure.
 */
const MAX_FETCH_PAUSE_MS = 5_000;
/** Upper bound on upstream calls within one attempt (fallbacks, retired ids, the NO_IMAGE retry). */
const MAX_CALLS_PER_ATTEMPT = 6;
/** One unit of the TurnPacer for parsing or storing an answer: about a 1K image's JSON (~250,000 characters). */
const PARSE_UNIT_CHARS = 256 * 1024;

export interface ImageJobDeps {
  config: Config;
  generator: ImageGenerator;
  store: ObjectStore;
  modelState: ModelStateStore;
  logger: Logger;
  now?: () => number;
  random?: () => number;
  policy?: RoutingPolicy;
  /** Aborted when the worker's shutdown grace runs out: in-flight jobs are released, not failed. */
  shutdownSignal?: AbortSignal;
  /** Run before a job's final state is recorded (webhooks, batch accounting); see jobs/terminal.ts. */
  terminalHooks?: readonly TerminalHook[];
  /** Fetches a `{url}` input image (through the SSRF guard); without it such jobs fail with INPUT_URL_REFUSED. */
  fetchInputImage?: (url: string, signal: AbortSignal) => Promise<{ mimeType: string; data: Buffer }>;
  /** Whether the job was cancelled while it waited (DELETE /v1/jobs/:id); checked before any call. */
  isCanceled?: (jobId: string) => Promise<boolean>;
  /** Batch maxCostUsd, TENANT_DAILY_BUDGET_USD and spend counters (src/budget/budgets.ts); none without it. */
  budgets?: BudgetGate;
  /** Shared model lanes (src/lanes): dispatch gate, learned rate and API key per call. Absent = no gating. */
  lanes?: LaneLimiter;
  /** Model health and breakers (src/health): every call's outcome is recorded, the router reads it. Absent = no health. */
  health?: HealthStore;
  /** Jobs waiting in the queue (src/queue/backlog.ts), for the spill-over decision; absent = always spill. */
  backlog?: BacklogReader;
  /**
   * Sharing a standard backlog with Pro from the start (spill.ts decideShare): this worker's slots, and
   * how many of them may be on Pro through sharing at once (LANE_SHARE_SLOTS). Absent = no sharing.
   */
  sharing?: { concurrency: number; maxSlots: number };
  /** Bounds the images held between a 200 and their upload (answer-gate.ts); absent = no bound. */
  answerGate?: AnswerGate;
  /** Spreads job starts and upstream requests over event-loop turns (turn-pacer.ts); absent = no pacing. */
  pacer?: TurnPacer;
  /**
   * Stops every worker of the fleet taking jobs for `ms` (BullMQ's queue.rateLimit): used when every
   * lane of every model is full, so no job could be dispatched before the next slot anyway. Absent =
   * such a job waits in the delayed set like any other.
   */
  pauseFetching?: (ms: number) => Promise<void>;
}

/** Thrown inside the processor to end the job for good; the code is already on the job's progress. */
class TerminalFailure extends UnrecoverableError {}

export function createImageJobProcessor(deps: ImageJobDeps) {
  const { config, generator, store, modelState } = deps;
  const budgets = deps.budgets ?? UNLIMITED_BUDGETS;
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;
  const models: Record<ModelFamily, readonly string[]> = { fast: config.MODEL_FAST, pro: config.MODEL_PRO };
  const allModelIds = [...config.MODEL_FAST, ...config.MODEL_PRO];
  const familyOf = (id: string): ModelFamily => (config.MODEL_PRO.includes(id) ? 'pro' : 'fast');
  /** A turn of the pacer weighted by an answer's size (a 4K answer is many 1K units and goes alone). */
  const paceBySize = async (size: number): Promise<void> => deps.pacer?.turn(Math.max(1, Math.ceil(size / PARSE_UNIT_CHARS)));
  /** This worker's calls on Pro through sharing, now (bounded by deps.sharing.maxSlots). */
  let sharedInFlight = 0;

  return async function processImageJob(job: Job, token?: string, signal?: AbortSignal): Promise<JobResult> {
    await deps.pacer?.turn();
    const attempt = job.attemptsMade + 1;
    let log = deps.logger.child({ jobId: job.id, attempt });
    const progress = readProgress(job.progress);
    progress.startedAt ??= new Date(now()).toISOString();

    const save = () => job.updateProgress(progress);
    const hooks = deps.terminalHooks ?? [];
    // Set once job.data is validated; the terminal hooks need it.
    const validated: { data?: StoredJobData } = {};
    const ended = async (status: 'failed' | 'canceled', err: PixelmillError) => {
      progress.error = err.toJSON();
      if (status === 'canceled') progress.canceledAt ??= new Date(now()).toISOString();
      await save();
      if (validated.data) {
        await runTerminalHooks(hooks, {
          jobId: String(job.id), data: validated.data, status, error: progress.error, costUsd: progress.costUsd, at: new Date(now()).toISOString(),
        });
      }
    };
    const fail = async (err: PixelmillError): Promise<never> => {
      await ended(err.code === 'CANCELED' ? 'canceled' : 'failed', err);
      log.warn({ code: err.code, err: err.message }, 'job failed');
      throw new TerminalFailure(`${err.code}: ${err.userMessage}`);
    };
    /** A retryable failure: BullMQ retries it, unless this was the last attempt, which makes it final. */
    const retryLater = async (err: PixelmillError): Promise<never> => {
      const last = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
      if (last) await ended('failed', err);
      else {
        progress.error = err.toJSON();
        await save();
      }
      throw err;
    };

    // 1. Validate where it is read: job.data is unknown until parsed.
    const parsed = storedJobDataSchema.safeParse(job.data);
    if (!parsed.success) {
      return fail(new PixelmillError('INVALID_REQUEST', `job data is not a pixelmill job (${parsed.error.issues[0]?.path.join('.')}: ${parsed.error.issues[0]?.message})`));
    }
    const jobData: StoredJobData = parsed.data;
    validated.data = jobData;
    const req = jobData.request;
    const deadline = req.deadline ? Date.parse(req.deadline) : undefined;
    const want = pixelSize(req.size, req.aspectRatio);

    // One signal for the upstream call: the job's cancellation or the worker's shutdown, whichever comes first.
    const link = linkSignals([signal, deps.shutdownSignal]);
    const combined = link.signal;
    // Taken before a 200 body is read, given back once the image is stored (answer-gate.ts).
    const answerSlot = deps.answerGate?.slot();
    /** The job's own signal aborted (DELETE /v1/jobs/:id reached this worker), not a shutdown. */
    const canceled = () => signal?.aborted === true && deps.shutdownSignal?.aborted !== true;
    const canceledWhileRunning = () => fail(new PixelmillError('CANCELED', 'the job was cancelled while it ran'));
    /** An aborted call: a cancellation ends the job as CANCELED; a shutdown hands it back. */
    const stopped = (): Promise<never> =>
      canceled() ? canceledWhileRunning() : released(job, token, progress, log);
    // A slot of this worker's Pro share (deps.sharing), held from the decision to share until the call
    // ends, so that jobs deciding at the same moment do not all take the same free share.
    let shareHeld = false;
    const releaseShare = (): void => {
      if (shareHeld) sharedInFlight -= 1;
      shareHeld = false;
    };
    try {
      return await run();
    } finally {
      releaseShare();
      answerSlot?.release();
      link.dispose();
    }

    async function run(): Promise<JobResult> {
      if (deps.isCanceled && (await deps.isCanceled(String(job.id)))) {
        return fail(new PixelmillError('CANCELED', 'the job was cancelled before it ran'));
      }
      let inputs: { mimeType: string; data: Buffer }[];
      try {
        inputs = await loadInputImages(store, jobData, combined, deps.fetchInputImage);
      } catch (err) {
        if (combined.aborted) return stopped();
        const e = toPixelmillError(err);
        return e.retryable ? retryLater(e) : fail(e);
      }

      // Lanes found full in this attempt (model id → the lane's refusal): a standard job spills over to the
      // tier's other model instead of waiting, so both models' quotas serve the backlog. A refusal's
      // untilMs carries the herd jitter (a job delayed in Redis); slotAt is the slot itself (a fleet-wide pause).
      const laneFull = new Map<string, LaneWait>();
      let spillNote = '';
      // The model tried first for sharing (Pro); its lane being full is no spill-over, just no room to share.
      let sharedFirst: string | undefined;
      for (let call = 0; call < MAX_CALLS_PER_ATTEMPT; call++) {
        releaseShare(); // every round decides anew
        if (canceled()) return canceledWhileRunning();
        if (deadline !== undefined && now() >= deadline) {
          return fail(new PixelmillError('DEADLINE_EXCEEDED', `the deadline ${req.deadline} passed after ${progress.history.length} call(s)`));
        }

        // 2. Route on the fleet's shared view of the models.
        // Health (src/health): the window's 429 rate and the breakers are read alongside the cooldowns.
        const [state, health] = await Promise.all([modelState.snapshot(allModelIds), deps.health?.snapshot(allModelIds, now())]);
        const decision = route(
          { tier: req.tier, size: req.size, aspectRatio: req.aspectRatio, allowDowngrade: req.allowDowngrade, history: progress.history, attempt },
          { now: now(), state, models, peakWindows: config.PEAK_WINDOWS, timeZone: config.PEAK_TIMEZONE, policy: deps.policy, health },
        );

        if (decision.kind === 'none') {
          const blockedBefore = progress.history.some((h) => h.outcome === 'CONTENT_BLOCKED');
          return fail(new PixelmillError(blockedBefore ? 'CONTENT_BLOCKED' : 'NO_MODEL_AVAILABLE', decision.reason));
        }

        if (decision.kind === 'wait') {
          if (deadline !== undefined && decision.untilMs >= deadline) {
            return fail(new PixelmillError('DEADLINE_EXCEEDED', `the deadline ${req.deadline} comes before the models are free again (${decision.reason})`));
          }
          if (progress.rateLimitRequeues >= config.RATE_LIMIT_MAX_REQUEUES) {
            return fail(new PixelmillError('RATE_LIMITED', `still rate limited after ${progress.rateLimitRequeues} requeues (RATE_LIMIT_MAX_REQUEUES)`));
          }
          progress.rateLimitRequeues += 1;
          appendHistory(progress, entry(attempt, null, null, 'requeued', 0, now(), decision.reason));
          await save();
          log.info({ untilMs: decision.untilMs, reason: decision.reason }, 'requeued until a model is free');
          // Not an attempt: the upstream told us when to come back.
          await job.moveToDelayed(decision.untilMs, token);
          throw new DelayedError();
        }

        // Output validation (VALUE): after a DEGRADED answer the other model goes first (output-check.ts).
        let ranked = preferUndegraded(decision.candidates, progress.history, attempt);
        // Sharing (spill.ts): a standard backlog that keeps Nano Banana 2 busy longer than Pro's extra
        // latency (at its known quota, or at best on all this worker's slots) tries Pro first, within
        // LANE_SHARE_SLOTS of the slots, so Pro's quota serves it from the first job.
        // Only while this worker's Pro share has room: a full share costs no reads.
        const sharing = deps.sharing && sharedInFlight < deps.sharing.maxSlots ? deps.sharing : undefined;
        if (req.tier === 'standard' && deps.lanes && deps.backlog && sharing && laneFull.size === 0 && ranked[0]?.family === 'fast') {
          const pro = ranked.find((c) => c.family === 'pro');
          if (pro) {
            const first = ranked[0];
            // Both reads are shared per worker for 250 ms (one round trip for hundreds of jobs).
            const [firstRpm, backlog] = await Promise.all([deps.lanes.knownRpm(first.modelId).catch(() => 0), deps.backlog().catch(() => 0)]);
            const share = decideShare({
              firstRpm, backlog, firstP95Ms: health?.[first.modelId]?.p95 ?? null, otherP95Ms: health?.[pro.modelId]?.p95 ?? null,
              typicalFirstP95Ms: LATENCY_SECONDS.fast[req.size][1] * 1000, typicalOtherP95Ms: LATENCY_SECONDS.pro[req.size][1] * 1000,
              concurrency: sharing.concurrency,
            });
            // Checked again after the reads: jobs deciding at the same moment all saw the same room.
            if (share.share && sharedInFlight < sharing.maxSlots) {
              sharedFirst = pro.modelId;
              sharedInFlight += 1;
              shareHeld = true;
              ranked = [{ ...pro, reason: `sharing the backlog with ${FAMILY_LABEL.pro} (${share.note}); ${pro.reason}` }, ...ranked.filter((c) => c !== pro)];
            }
          }
        }
        const notFull = ranked.filter((c) => !laneFull.has(c.modelId));
        let candidate: Candidate = notFull[0] ?? ranked[0]!;
        if (notFull.length > 0 && notFull.length < ranked.length && [...laneFull.keys()].some((id) => id !== sharedFirst)) {
          const full = [...laneFull.keys()].join(', ');
          candidate = { ...candidate, reason: `spill-over to ${FAMILY_LABEL[candidate.family]}: lane ${full} is full (${spillNote}); ${candidate.reason}` };
        }

        // Budgets (VALUE, src/budget/budgets.ts): reserve this call's list price against the batch's
        // maxCostUsd and the tenant's daily cap; over budget: BUDGET_EXCEEDED, or Nano Banana 2 when allowed.
        const admission = await budgets.admit({
          jobId: String(job.id), data: jobData, candidate, fastModelIds: models.fast, state,
          callBudgetMs: Math.min(config.UPSTREAM_TIMEOUT_MS, deadline !== undefined ? Math.max(0, deadline - now()) : Infinity),
        });
        if (admission.kind === 'exceeded') return fail(admission.error);
        if (admission.kind === 'wait') {
          appendHistory(progress, entry(attempt, null, null, 'requeued', 0, now(), admission.reason));
          await save();
          await job.moveToDelayed(admission.untilMs, token);
          throw new DelayedError();
        }
        candidate = admission.candidate;
        // Health: a half-open breaker admits one probe fleet-wide; losing the race means route again (now open).
        // With lanes the breakers are per lane and the lane gate claims the probe with the slot (limiter.ts).
        let probeToken: string | undefined;
        if (!deps.lanes && health?.[candidate.modelId]?.breaker === 'half-open') {
          const claim = await deps.health!.claimProbe(candidate.modelId, now());
          if (claim.kind === 'busy') {
            await admission.reservation.release();
            continue;
          }
          if (claim.kind === 'probe') probeToken = claim.token;
        }
        log = log.child({ model: candidate.modelId });
        progress.route = { family: candidate.family, model: candidate.modelId, reason: candidate.reason };
        // 3a. Lane gate (src/lanes): a dispatch slot and an API key for this model now or very soon;
        // otherwise the job waits in Redis (moveToDelayed, no attempt used), not in this worker's memory.
        const gate = deps.lanes ? await deps.lanes.acquire(candidate.modelId, String(job.id)) : undefined;
        if (gate && gate.kind !== 'go') await admission.reservation.release(); // VALUE: no call, no budget held
        if (gate && gate.kind !== 'go' && probeToken) await deps.health!.releaseProbe(candidate.modelId, probeToken); // HEALTH: nor a probe
        if (gate?.kind === 'no-keys') return fail(new PixelmillError('UPSTREAM_AUTH', gate.reason));
        if (gate?.kind === 'wait') {
          // Spill-over (standard tier only: draft never pays Pro prices, premium never downgrades for speed),
          // unless the first lane reaches this job sooner than the other model's extra latency (spill.ts).
          laneFull.set(candidate.modelId, gate);
          let waitReason = gate.reason;
          const other = req.tier === 'standard' ? ranked.find((c) => !laneFull.has(c.modelId)) : undefined;
          if (other) {
            const spill = decideSpill({
              waitMs: gate.waitMs, firstRpm: gate.rpm, backlog: deps.backlog ? await deps.backlog().catch(() => Infinity) : Infinity,
              firstP95Ms: health?.[candidate.modelId]?.p95 ?? null, otherP95Ms: health?.[other.modelId]?.p95 ?? null,
            });
            if (spill.spill) {
              spillNote = spill.note;
              continue;
            }
            // Waiting for the first model is quicker: keep its slot time only.
            laneFull.clear();
            laneFull.set(candidate.modelId, gate);
            waitReason += `; not spilled: ${spill.note}`;
          }
          const nextSlot = Math.min(...[...laneFull.values()].map((f) => f.untilMs));
          if (deadline !== undefined && nextSlot >= deadline) {
            return fail(new PixelmillError('DEADLINE_EXCEEDED', `the deadline ${req.deadline} comes before a dispatch slot (${waitReason})`));
          }
          // Every lane of both families' models is full (the model a family is routed to; its other ids
          // are fallbacks for a retired one): no job of the queue could go before the first next slot.
          // Rather than each worker taking job after job only to put it back (a worker at 100 % CPU
          // churning a backlog through Redis), the fleet stops taking jobs until then; this job goes
          // back to the queue where it was (its priority and position kept, no attempt used).
          const pauseMs = Math.min(MAX_FETCH_PAUSE_MS, Math.ceil(Math.min(...[...laneFull.values()].map((f) => f.slotAt)) - now()));
          const full = new Set([...laneFull.keys()].map(familyOf));
          if (deps.pauseFetching && pauseMs > 0 && full.has('fast') && full.has('pro')) {
            await deps.pauseFetching(pauseMs);
            log.debug({ pauseMs, reason: waitReason }, 'every lane full: the fleet pauses taking jobs');
            throw Worker.RateLimitError();
          }
          // A lane full for rate serves its waiters one per interval: a job bound to one model (draft; premium
          // without allowDowngrade) comes back at its turn in the model's waiting line, not with every other
          // refused job at the next slot. A standard job is in no line: its route changes as the lanes do
          // (spill-over, sharing, a fallback ending with a cooldown), so it looks again at the next slot.
          let comeBack = nextSlot;
          const boundToOneModel = req.tier === 'draft' || (req.tier === 'premium' && !req.allowDowngrade);
          const [waitModel, waitSlot] = [...laneFull].reduce((a, b) => (b[1].untilMs < a[1].untilMs ? b : a));
          if (deps.lanes && boundToOneModel && waitSlot.why === 'rate' && waitSlot.intervalMs > 0) {
            comeBack = await deps.lanes.comeBackAt(waitModel, String(job.id), job.priority, waitSlot).catch(() => nextSlot);
            if (deadline !== undefined) comeBack = Math.min(comeBack, deadline - 1);
            if (comeBack > waitSlot.slotAt) waitReason += `; turn in line in ${Math.round(comeBack - now())} ms`;
          }
          appendHistory(progress, entry(attempt, candidate.modelId, candidate.family, 'requeued', 0, now(), waitReason));
          await save();
          log.debug({ untilMs: comeBack, full: [...laneFull.keys()], reason: waitReason }, 'lanes full: back to Redis until a slot');
          await job.moveToDelayed(comeBack, token);
          throw new DelayedError();
        }
        const lease = gate?.lease;
        // The route, saved once the call is sure to go. Not awaited: the call need not wait for it, and
        // the job's later saves go out on the same connection after it (ioredis keeps a connection's
        // commands in order).
        save().catch((err: unknown) => log.warn({ err: String(err) }, 'progress save failed'));

        // 3. Generate. The call's budget is the upstream timeout, or less when the deadline is nearer.
        const budget = Math.max(1, Math.min(config.UPSTREAM_TIMEOUT_MS, deadline !== undefined ? deadline - now() : Infinity));
        await deps.pacer?.turn(); // opening a socket and writing the request: one of perTurn this turn
        const started = now();
        let image: GeneratedImage;
        if (candidate.modelId !== sharedFirst) releaseShare(); // Pro's lane was full: no share taken
        try {
          const call = candidate;
          // VALUE: `around` settles the budget reservation with the call's actual cost (success or not).
          // LANES: withLane releases the lane's in-flight slot when the call ends and feeds its outcome back (AIMD).
          image = await admission.reservation.around(() => withLane(deps.lanes, lease, () => generator.generate({
            modelId: call.modelId, prompt: req.prompt, size: req.size, aspectRatio: req.aspectRatio,
            inputImages: inputs, timeoutMs: budget, signal: combined, ...(lease ? { apiKey: lease.apiKey } : {}),
            ...(answerSlot ? { beforeBody: (s: AbortSignal) => answerSlot.acquire(s) } : {}),
            ...(deps.pacer ? { beforeParse: paceBySize } : {}),
          })));
        } catch (err) {
          answerSlot?.release();
          if (combined.aborted && probeToken) await deps.health!.releaseProbe(candidate.modelId, probeToken).catch(() => false); // HEALTH
          if (combined.aborted && lease?.probeToken) await deps.health?.releaseProbe(lease.lane, lease.probeToken).catch(() => false);
          if (combined.aborted) return stopped();
          const e = toPixelmillError(err);
          const latencyMs = now() - started;
          await recordHealth(candidate, e.code, latencyMs, false, probeToken ?? lease?.probeToken, log, lease?.lane);
          const usage = e.details['usage'] as Usage | undefined;
          const cost = usage ? costFromUsage(candidate.family, usage) : 0;
          progress.costUsd = round6(progress.costUsd + cost);
          appendHistory(progress, {
            ...entry(attempt, candidate.modelId, candidate.family, e.code, latencyMs, now(), candidate.reason, cost),
            ...(e.retryAfterMs !== undefined ? { retryAfterMs: e.retryAfterMs } : {}),
          });
          progress.error = e.toJSON();
          log.info({ code: e.code, latencyMs, err: e.message }, 'upstream call failed');

          const next = await decideAfterFailure(e, candidate, req, progress, lease);
          if (next === 'again') continue;
          if (next === 'retry') {
            await save();
            throw e; // BullMQ retries after the backoff (consumes an attempt) or fails when none are left
          }
          return fail(e);
        } finally {
          releaseShare();
        }

        // Recorded while the image is being checked and stored; awaited before the job ends (below).
        const healthRecorded = recordHealth(candidate, 'succeeded', image.latencyMs, describeDegradation(image, candidate.family, want) !== undefined, probeToken ?? lease?.probeToken, log, lease?.lane);

        // 4. Store. A deterministic key: a retry overwrites, never duplicates.
        const key = outputKey(config, String(job.id), image.mimeType);
        const latencyMs = image.latencyMs;
        const cost = costFromUsage(candidate.family, image.usage);
        progress.costUsd = round6(progress.costUsd + cost);

        // Output validation (VALUE, output-check.ts): a 200 whose image is not what was asked is
        // DEGRADED, one history entry with that outcome (model health counts it); the tier's
        // DEGRADED_ACTION says whether it is stored and flagged or retried.
        const degraded = describeDegradation(image, candidate.family, want);
        if (degraded) {
          await healthRecorded; // the next call's routing must see this degraded answer
          const verdict = decideDegraded({
            action: degradedActionFor(config, req.tier), tier: req.tier, allowDowngrade: req.allowDowngrade, size: req.size,
            aspectRatio: req.aspectRatio, family: candidate.family, attempt, lastAttempt: job.attemptsMade + 1 >= (job.opts.attempts ?? 1),
            history: [...progress.history, { attempt, family: candidate.family, outcome: DEGRADED_OUTCOME }],
          });
          appendHistory(progress, entry(attempt, candidate.modelId, candidate.family, DEGRADED_OUTCOME, latencyMs, now(), `${candidate.reason}; ${degraded}; ${verdict.note}`, cost));
          log.info({ degraded, verdict: verdict.kind }, 'degraded answer');
          if (verdict.kind !== 'accept') {
            const e = new PixelmillError('DEGRADED', `${degraded} (${verdict.note})`);
            progress.error = e.toJSON();
            if (verdict.kind === 'other-model') {
              answerSlot?.release();
              continue;
            }
            await save();
            throw e; // BullMQ retries after the backoff (an attempt is consumed)
          }
        }
        // Cancelled while the answer came in: the call is paid for, but nothing is stored.
        if (canceled()) return canceledWhileRunning();
        // Hashing and signing the upload: paced like the parse (a few answers per event-loop turn).
        await paceBySize(image.bytes.length);
        const put = await store
          .put(key, image.bytes, image.mimeType, {
            'job-id': String(job.id), model: candidate.modelId, 'model-version': image.modelVersion ?? '', 'prompt-sha256': jobData.promptSha256,
            ...tenantMetadata(jobData.tenant),
          })
          .catch(async (err: unknown) => {
            const e = toPixelmillError(err);
            appendHistory(progress, entry(attempt, candidate.modelId, candidate.family, e.code, latencyMs, now(), candidate.reason, cost));
            progress.error = e.toJSON();
            await save();
            throw e;
          })
          // Stored or not, this image no longer counts against the worker's answer gate.
          .finally(() => answerSlot?.release());
        // A degraded image that is kept already has its DEGRADED entry (one entry per call).
        if (!degraded) appendHistory(progress, entry(attempt, candidate.modelId, candidate.family, 'succeeded', latencyMs, now(), candidate.reason, cost));
        delete progress.error;
        await save();

        log.info({ key, bytes: put.bytes, latencyMs, costUsd: cost, degraded }, 'image stored');
        const result: JobResult = {
          v: 1, key, bytes: put.bytes, sha256: put.sha256, width: image.width, height: image.height, mimeType: image.mimeType,
          family: candidate.family, model: candidate.modelId, modelVersion: image.modelVersion, responseId: image.responseId,
          finishReason: image.finishReason, routingReason: candidate.reason, usage: image.usage, costUsd: cost,
          totalCostUsd: progress.costUsd, attempts: attempt, upstreamLatencyMs: latencyMs,
          ...(degraded ? { degraded } : {}),
        };
        await healthRecorded;
        // Outbox first: the hooks (webhook, batch accounting) run before BullMQ records the result.
        await runTerminalHooks(hooks, {
          jobId: String(job.id), data: jobData, status: 'succeeded', result, costUsd: progress.costUsd, at: new Date(now()).toISOString(),
        });
        return result;
      }
      throw new PixelmillError('INTERNAL', `more than ${MAX_CALLS_PER_ATTEMPT} upstream calls in one attempt`);
    }
  };

  /** What to do after a failed call: try another candidate now, retry later, or give up. */
  async function decideAfterFailure(
    e: PixelmillError, candidate: Candidate, req: StoredJobData['request'], progress: JobProgress, lease?: LaneLease,
  ): Promise<'again' | 'retry' | 'fail'> {
    switch (e.code as ErrorCode) {
      case 'RATE_LIMITED': {
        // The whole fleet backs off this model; the router then falls back or requeues the job.
        const scope = e.details['quotaScope'];
        const untilMs =
          scope === 'day'
            ? nextMidnight(now())
            : now() + rateLimitDelay(e.retryAfterMs, progress, candidate.modelId) + cooldownJitter(e.retryAfterMs ?? 0, random);
        // With lanes, the 429 (or the per-day quota) closes this (model, key) lane; the model as a whole
        // cools down only when no other lane of it is open.
        const modelUntil = lease ? await deps.lanes!.closeLane(lease, untilMs, `${e.code} (${String(scope ?? 'unknown')})`) : untilMs;
        if (modelUntil > now()) await modelState.extendCooldown(candidate.modelId, modelUntil);
        return 'again';
      }
      case 'UPSTREAM_AUTH':
        // src/lanes: the key goes out of rotation; the job tries another key at once when one is left.
        return lease && (await deps.lanes!.disableKey(lease, e.message)) ? 'again' : 'fail';
      case 'MODEL_NOT_FOUND':
        await modelState.markRetired(candidate.modelId, e.message);
        return 'again';
      case 'CONTENT_BLOCKED': {
        // Nano Banana 2 blocks more than Pro (seeds): a standard job gets one try on Pro.
        const proCan = supports('pro', req.size, req.aspectRatio);
        const proBlocked = progress.history.some((h) => h.family === 'pro' && h.outcome === 'CONTENT_BLOCKED');
        return req.tier === 'standard' && candidate.family === 'fast' && proCan && !proBlocked ? 'again' : 'fail';
      }
      case 'NO_IMAGE':
        return progress.history.filter((h) => h.outcome === 'NO_IMAGE').length <= 1 ? 'again' : 'fail';
      default:
        return e.retryable ? 'retry' : 'fail';
    }
  }

  /**
   * Health: one call's outcome into the model's window and its breaker (lane id = model id until the
   * breaker is keyed by lane). Health is advisory: a Redis hiccup here must not fail the job.
   */
  async function recordHealth(
    candidate: Candidate, outcome: string, latencyMs: number, degraded: boolean, probeToken: string | undefined, log: Logger, lane?: string,
  ): Promise<void> {
    if (!deps.health) return;
    await deps.health
      .recordOutcome(candidate.modelId, { outcome, latencyMs, degraded, ...(probeToken ? { probeToken } : {}) }, now(), lane ?? candidate.modelId)
      .then((b) => { if (b.breaker === 'open' && outcome !== 'succeeded') log.warn({ model: candidate.modelId, lane, failures: b.consecutiveFailures }, 'breaker open'); })
      .catch((err: unknown) => log.warn({ err: String(err) }, 'health record failed'));
  }

  /** Delay after a 429: the provider's RetryInfo when given, else doubling from the backoff base. */
  function rateLimitDelay(retryAfterMs: number | undefined, progress: JobProgress, modelId: string): number {
    if (retryAfterMs !== undefined) return retryAfterMs;
    const n = progress.history.filter((h) => h.model === modelId && h.outcome === 'RATE_LIMITED').length;
    return Math.min(config.BACKOFF_CAP_MS, config.BACKOFF_BASE_MS * 2 ** Math.max(0, n - 1));
  }

  function entry(
    attempt: number, model: string | null, family: ModelFamily | null, outcome: string, latencyMs: number, at: number, reason?: string, costUsd?: number,
  ): HistoryEntry {
    return {
      attempt, model, family: family ?? (model ? familyOf(model) : null), outcome, latencyMs: Math.max(0, Math.round(latencyMs)),
      at: new Date(at).toISOString(), ...(reason ? { reason } : {}), ...(costUsd ? { costUsd } : {}),
    };
  }
}

/**
 * The call was aborted because the worker's shutdown grace ran out: the job is handed back (delayed
 * until now, no attempt consumed) so another worker takes it at once instead of waiting for the
 * stalled-job check. (A cancellation ends the job as CANCELED instead; see `fail`.)
 */
async function released(job: Job, token: string | undefined, progress: JobProgress, log: Logger): Promise<never> {
  appendHistory(progress, { attempt: job.attemptsMade + 1, model: progress.route?.model ?? null, family: progress.route?.family ?? null, outcome: 'released', latencyMs: 0, at: new Date().toISOString(), reason: 'worker shutting down' });
  await job.updateProgress(progress);
  await job.moveToDelayed(Date.now(), token);
  log.info('released to another worker (shutdown)');
  throw new DelayedError();
}

async function loadInputImages(
  store: ObjectStore, data: StoredJobData, signal: AbortSignal, fetchUrl: ImageJobDeps['fetchInputImage'],
): Promise<{ mimeType: string; data: Buffer }[]> {
  return Promise.all(
    data.request.inputImages.map(async (img) => {
      if ('url' in img) {
        if (!fetchUrl) throw new PixelmillError('INPUT_URL_REFUSED', `input image URLs are not enabled in this worker (${img.url})`);
        return fetchUrl(img.url, signal);
      }
      const got = await store.get(img.s3Key);
      return { mimeType: img.mimeType ?? got.contentType ?? 'image/png', data: got.body };
    }),
  );
}

/**
 * A signal that aborts when any of `signals` does. Unlike AbortSignal.any, the listeners on the
 * long-lived shutdown signal are removed when the job ends, so nothing accumulates per job.
 */
function linkSignals(signals: (AbortSignal | undefined)[]): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const undo: (() => void)[] = [];
  for (const s of signals) {
    if (!s) continue;
    if (s.aborted) {
      controller.abort(s.reason);
      break;
    }
    const onAbort = () => controller.abort(s.reason);
    s.addEventListener('abort', onAbort, { once: true });
    undo.push(() => s.removeEventListener('abort', onAbort));
  }
  return { signal: controller.signal, dispose: () => undo.forEach((u) => u()) };
}

function round6(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}
