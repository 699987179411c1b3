/**
 * # Gemini simulator
 *
 * A local stand-in for `generativelanguage.googleapis.com` that speaks the real wire format of
 * `POST /v1beta/models/{model}:generateContent` for the Gemini image models, with realistic
 * latency, quotas, peak hours and the failure modes seen in production. Tests, the embedded dev
 * stack (`pixelmill dev` without GEMINI_API_KEY) and the benchmarks run against it; the CLI starts it
 * alone with `pixelmill simulate`.
 *
 * ## What it does per request
 *
 * 1. API key from `x-goog-api-key` (or `?key=`). Missing or not in `apiKeys` → 400 INVALID_ARGUMENT
 *    "API key not valid. Please pass a valid API key." with ErrorInfo reason `API_KEY_INVALID`.
 *    With `apiKeys` empty, any non-empty key is accepted.
 * 2. Body: bodies over `maxBodyBytes` (20 MiB) → 400 "Request payload size exceeds the limit".
 *    Malformed JSON → 400 "Invalid JSON payload received. …"; unknown field names, wrong types and
 *    enum values → 400 with BadRequest field violations, like proto-JSON parsing does.
 * 3. Model: ids not in `models` → 404 NOT_FOUND "models/X is not found for API version v1beta, or is
 *    not supported for generateContent. …" (retire a model at run time with `setModels()` or
 *    `POST /_sim/models`).
 * 4. Image options: `generationConfig.imageConfig.imageSize` (default 1K) and `aspectRatio`
 *    (default 1:1) must suit the family: Pro has no `512` and no 1:4, 4:1, 1:8, 8:1 → 400.
 *    `thinkingConfig.thinkingLevel` is checked too (Nano Banana 2: MINIMAL or HIGH; Pro: LOW or HIGH).
 * 5. Fault markers in the prompt (below), then the per-minute quota, then random faults.
 * 6. Waits the generation latency, then answers like the live API: optional thought parts
 *    (`includeThoughts`), sometimes a short signed text part, and the final non-thought image part
 *    `{inlineData: {mimeType, data}, thoughtSignature}`. The image is a real JPEG (or PNG with
 *    `outputMimeType`) of exactly `pixelSize(size, aspectRatio)`; usageMetadata carries the
 *    family's IMAGE tokens for the size (candidatesTokenCount a bit larger, like 1392 vs 1120),
 *    `serviceTier`, `modelVersion` (the requested id) and a seeded `responseId`.
 *    With `responseModalities` lacking IMAGE the answer is text only.
 *
 * Latency (seconds, before `timeScale`), from the seeds' measured table: Nano Banana 2 512 3-5,
 * 1K 5-10, 2K 10-25, 4K 20-60; Pro 1K 10-20, 2K 20-35, 4K 30-60; `thinkingLevel: HIGH` adds 1-4.
 * At peak Nano Banana 2 takes `peakLatencyFactor` (2) times as long and gets `peakQuotaFactor`
 * (0.3) of its quota. 429s answer after 0.1-0.6 s, 503s after 0.2-2 s, 500s part-way through.
 *
 * ## Options (`startSimulator(opts)`; CLI flags of `pixelmill simulate` in brackets)
 *
 * - `port` (0 = any free port) [--port], `host` (127.0.0.1) [--host]
 * - `apiKeys` ([] = any non-empty key) [--api-key K, repeatable]
 * - `models` ({id, family}[]; default gemini-3.1-flash-image, gemini-3.1-flash-image-preview (fast),
 *   gemini-3-pro-image, gemini-3-pro-image-preview (pro)) [--models id=fast,id2=pro]
 * - `timeScale` (1) multiplies every latency and the length of the quota minute; 0 = answer at once.
 *   With 0 the minute stays 60 real seconds, so quota refill and advised retry delays stay real
 *   time. [--time-scale X]
 * - `seed` (1): all randomness (latency, ids, signatures, random faults) is derived from the seed
 *   and the request's content and repeat count, so it does not depend on arrival order. [--seed S]
 * - `quotas` ({} = unlimited): requests per minute by family or by model id (`{fast: 10,
 *   'gemini-3-pro-image': 5}`); one token bucket per model id (Google's quota dimension is the
 *   model), burst = the per-minute limit. Over quota → 429 RESOURCE_EXHAUSTED with Help,
 *   QuotaFailure (quotaId GenerateRequestsPerMinutePerProjectPerModel, quotaValue) and RetryInfo
 *   (`retryDelay` = time until the bucket has a token, fractional seconds), and no Retry-After
 *   header. [--quota-fast RPM, --quota-pro RPM]
 * - `peak` ('auto' | 'on' | 'off'; auto = inside `peakWindows` (10:00-14:00) in `timeZone` (UTC)
 *   by the clock `now`) [--peak, --peak-windows, --time-zone]; change at run time with `setPeak()`
 *   or `POST /_sim/peak {"peak":"on"}`. `peakQuotaFactor`, `peakLatencyFactor`, `peakFaultRates`
 *   (extra fault rates for the fast family at peak) [--peak-fault-rate].
 * - `faultRates` ({}): probability per request of each fault, at most one fault per request
 *   [--fault-rate 429=0.05,503=0.02]
 * - `outputMimeType` ('image/jpeg' | 'image/png') [--png]
 * - `now` (Date.now): the clock for peak windows and quota buckets
 * - `maxBodyBytes` (20 MiB), `hangMaxMs` (1 h) [--hang-max-ms], `requestLogSize` (1000)
 *
 * ## Fault markers
 *
 * A marker in the prompt text makes a request fail deterministically:
 * `[sim:FAULT]`, `[sim:FAULT@fast]` / `[sim:FAULT@pro]` / `[sim:FAULT@<model id>]` (only on that
 * family or model), `[sim:FAULT*N]` (only the first N matching requests carrying this exact prompt
 * text), combinable as `[sim:429@fast*2]`. Several markers are tried in order and the first that
 * applies wins, so `[sim:503*1][sim:429*1]` answers 503, then 429, then succeeds. Markers skip the
 * quota. An unknown fault name answers 400 so typos do not pass silently.
 *
 * Faults: `429` (per-minute quota body with RetryInfo), `429-day` (quotaId
 * GenerateRequestsPerDayPerProjectPerModel, RetryInfo until midnight Pacific), `429-bare`
 * ("Resource has been exhausted (e.g. check quota).", no details), `500` (INTERNAL), `503`
 * ("The model is overloaded. Please try again later.", UNAVAILABLE), `hang` (no answer until the
 * client disconnects or `hangMaxMs`, then 504), `truncate` (200 with the JSON cut in the middle),
 * `reset` (200 headers and half the body, then the connection is destroyed), `image-safety`
 * (finishReason IMAGE_SAFETY with a text refusal), `no-image` (`content: {}`, NO_IMAGE, prompt-only
 * usage), `image-other` (`content: {}`, IMAGE_OTHER, finishMessage), `block` (no candidates,
 * promptFeedback.blockReason PROHIBITED_CONTENT), `degrade` (success with modelVersion
 * gemini-2.5-flash-image), `two-images` (two non-thought images: a 1K one, or a 512 one when 1K was
 * asked, before the requested one), `text-only` (STOP with only a text part).
 *
 * ## Control endpoints (no API key)
 *
 * `GET /_sim/stats` (per model id: requests, ok, rateLimited, rejected, faults, inFlight, aborted),
 * `POST /_sim/reset` (zero stats, request log, marker counters and quota buckets),
 * `GET /_sim/requests[?prompt=…&model=…]` (recent requests, oldest first), `GET|POST /_sim/models`,
 * `GET|POST /_sim/peak`, `GET /_sim/config`. `GET /v1beta/models[/{id}]` lists the known models.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { FAMILY_LABEL, MODEL_FAMILIES, pixelSize, type ImageSize, type ModelFamily } from '../models/catalogue.js';
import { activePeakWindow, minuteOfDay, parsePeakWindows, type PeakWindow } from '../routing/peak-windows.js';
import { addRates, checkRates, MarkerLedger, parseMarkers, pickRandomFault, type Fault, type FaultMarker } from './faults.js';
import {
  apiKeyInvalid,
  deadlineExceeded,
  internalError,
  invalidArgument,
  invalidJson,
  methodNotAllowed,
  modelNotFound,
  overloaded,
  pathNotFound,
  payloadTooLarge,
  quotaExceeded,
  resourceExhaustedBare,
  type SimError,
} from './google-errors.js';
import { encodedImage, type EncodedImage, type SimImageMime } from './images.js';
import { generationSeconds, highThinkingSeconds } from './latency.js';
import { promptHash, rngFrom, type Rng } from './prng.js';
import { goDuration, protoDuration, TokenBucket } from './quota.js';
import { describeRequest, parseGenerateRequest, type ParsedRequest } from './request.js';
import {
  blockedAnswer,
  emptyAnswer,
  imageAnswer,
  newResponseId,
  serializeAnswer,
  textAnswer,
  type Answer,
  type AnswerContext,
} from './response.js';

export type { Fault } from './faults.js';
export { FAULTS } from './faults.js';
export { promptHash } from './prng.js';

export type PeakMode = 'auto' | 'on' | 'off';

export interface SimModel {
  readonly id: string;
  readonly family: ModelFamily;
}

export const DEFAULT_SIM_MODELS: readonly SimModel[] = [
  { id: 'gemini-3.1-flash-image', family: 'fast' },
  { id: 'gemini-3.1-flash-image-preview', family: 'fast' },
  { id: 'gemini-3-pro-image', family: 'pro' },
  { id: 'gemini-3-pro-image-preview', family: 'pro' },
];

/** Requests per minute by family (`fast`, `pro`) or by exact model id; the model id wins. */
export type SimQuotas = { fast?: number; pro?: number } & Record<string, number | undefined>;

export interface SimulatorOptions {
  port: number;
  host: string;
  /** Accepted API keys; empty = any non-empty key. */
  apiKeys: readonly string[];
  models: readonly SimModel[];
  /** Multiplies latencies and the quota minute; 0 = no latency (the quota minute stays 60 s). */
  timeScale: number;
  seed: number;
  quotas: SimQuotas;
  peak: PeakMode;
  peakWindows: readonly PeakWindow[];
  timeZone: string;
  /** The fast family's quota at peak, as a fraction of the normal one. */
  peakQuotaFactor: number;
  /** The fast family's latency at peak, as a multiple of the normal one. */
  peakLatencyFactor: number;
  faultRates: Partial<Record<Fault, number>>;
  /** Extra fault rates for the fast family at peak (added to faultRates). */
  peakFaultRates: Partial<Record<Fault, number>>;
  outputMimeType: SimImageMime;
  /** Clock (ms since epoch) for peak windows and quota buckets. */
  now: () => number;
  maxBodyBytes: number;
  /** How long a `hang` fault holds the connection before answering 504. */
  hangMaxMs: number;
  requestLogSize: number;
}

export interface ModelStats {
  /** generateContent requests for this model id, whatever the outcome. */
  requests: number;
  /** 200 answers without an injected fault. */
  ok: number;
  /** 429 answers: quota exhausted or an injected 429 fault. */
  rateLimited: number;
  /** 400 and 404 answers (bad key, bad body, unknown model, unsupported size or ratio). */
  rejected: number;
  /** Injected faults by name. */
  faults: Partial<Record<Fault, number>>;
  inFlight: number;
  /** The client closed the connection before the answer was complete. */
  aborted: number;
}

export type SimulatorStats = Record<string, ModelStats>;

export interface SimRequestLog {
  seq: number;
  /** Arrival time by the simulator's clock (ms since epoch). */
  at: number;
  model: string;
  family: ModelFamily | null;
  promptHash: string;
  /** The first 80 characters of the prompt. */
  prompt: string;
  /** As asked (defaults filled in), also for rejected requests. */
  size: string | null;
  aspectRatio: string | null;
  inputImages: number;
  /** HTTP status sent; null while in flight or when the client went away first. */
  status: number | null;
  fault: Fault | null;
  aborted: boolean;
  /** The latency drawn for this request, after timeScale and peak (ms). */
  plannedMs: number | null;
  /** Wall time from arrival to the end of the answer (ms). */
  durationMs: number | null;
}

export interface RunningSimulator {
  readonly url: string;
  readonly port: number;
  stats(): SimulatorStats;
  requests(): SimRequestLog[];
  models(): SimModel[];
  setModels(models: readonly SimModel[]): void;
  setPeak(peak: PeakMode): void;
  /** Whether peak conditions apply right now. */
  isPeak(): boolean;
  /** Zero stats, the request log, marker counters and quota buckets (models and peak mode stay). */
  reset(): void;
  /** Stops listening and ends every open request, hanging ones included. */
  close(): Promise<void>;
}

const DEFAULTS: SimulatorOptions = {
  port: 0,
  host: '127.0.0.1',
  apiKeys: [],
  models: DEFAULT_SIM_MODELS,
  timeScale: 1,
  seed: 1,
  quotas: {},
  peak: 'auto',
  peakWindows: parsePeakWindows('10:00-14:00'),
  timeZone: 'UTC',
  peakQuotaFactor: 0.3,
  peakLatencyFactor: 2,
  faultRates: {},
  peakFaultRates: {},
  outputMimeType: 'image/jpeg',
  now: Date.now,
  maxBodyBytes: 20 * 1024 * 1024,
  hangMaxMs: 3_600_000,
  requestLogSize: 1000,
};

/** The per-day limit a `429-day` fault reports. */
const DAY_LIMIT = 250;
/** The per-minute limit a `429` fault reports when no quota is configured. */
const NOMINAL_RPM = 20;
const MODEL_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const GENERATE_PATH = /^\/(v1beta|v1alpha|v1)\/models\/([^/:]+):generateContent$/;
const MODEL_PATH = /^\/(v1beta|v1alpha|v1)\/models(?:\/([^/:]+))?$/;

function checkModels(models: readonly SimModel[]): SimModel[] {
  const seen = new Set<string>();
  return models.map((m) => {
    if (typeof m !== 'object' || m === null || typeof m.id !== 'string' || !MODEL_ID.test(m.id)) {
      throw new Error(`invalid model id ${JSON.stringify((m as SimModel | null)?.id)}`);
    }
    if (!MODEL_FAMILIES.includes(m.family)) throw new Error(`model ${m.id}: family must be fast or pro`);
    if (seen.has(m.id)) throw new Error(`model ${m.id} is listed twice`);
    seen.add(m.id);
    return { id: m.id, family: m.family };
  });
}

function checkPeak(p: unknown): PeakMode {
  if (p !== 'auto' && p !== 'on' && p !== 'off') throw new Error(`peak must be auto, on or off, not ${JSON.stringify(p)}`);
  return p;
}

function checkOptions(opts: Partial<SimulatorOptions>): SimulatorOptions {
  const o: SimulatorOptions = { ...DEFAULTS, ...stripUndefined(opts) };
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw new Error('timeScale must be a number >= 0');
  if (!Number.isFinite(o.seed)) throw new Error('seed must be a number');
  for (const [key, rpm] of Object.entries(o.quotas)) {
    if (rpm !== undefined && (!Number.isFinite(rpm) || rpm <= 0)) throw new Error(`quota of ${key} must be a number of requests per minute > 0`);
  }
  if (!(o.peakQuotaFactor > 0 && o.peakQuotaFactor <= 1)) throw new Error('peakQuotaFactor must be in (0, 1]');
  if (!(o.peakLatencyFactor >= 1)) throw new Error('peakLatencyFactor must be >= 1');
  if (o.outputMimeType !== 'image/jpeg' && o.outputMimeType !== 'image/png') throw new Error('outputMimeType must be image/jpeg or image/png');
  if (o.apiKeys.some((k) => typeof k !== 'string' || k.length === 0)) throw new Error('apiKeys must be non-empty strings');
  checkRates(o.faultRates, 'faultRates');
  checkRates(addRates(o.faultRates, o.peakFaultRates), 'faultRates + peakFaultRates');
  new Intl.DateTimeFormat('en-US', { timeZone: o.timeZone });
  return { ...o, models: checkModels(o.models), peak: checkPeak(o.peak) };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function emptyStats(): ModelStats {
  return { requests: 0, ok: 0, rateLimited: 0, rejected: 0, faults: {}, inFlight: 0, aborted: 0 };
}

/** Resolves true after `ms`, or false as soon as `signal` aborts. */
function wait(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const done = (completed: boolean): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      resolve(completed);
    };
    const onAbort = (): void => done(false);
    // setTimeout overflows past 2^31-1 ms (about 24.8 days) and would fire at once.
    const timer = setTimeout(() => done(true), Math.min(Math.max(0, ms), 2_147_483_647));
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = Buffer.from(JSON.stringify(body), 'utf8');
  res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8', 'content-length': text.length });
  res.end(text);
}

/** Read a body, keeping at most `limit` bytes (the rest is drained so the connection stays usable). */
async function readBody(req: IncomingMessage, limit: number): Promise<{ body: Buffer; tooLarge: boolean }> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size <= limit) chunks.push(chunk);
  }
  return { body: Buffer.concat(chunks), tooLarge: size > limit };
}

/** Google's parser reports the position of a syntax error; show the same kind of caret line. */
function jsonSyntaxReason(text: string, err: unknown): string {
  const m = /position (\d+)/.exec(err instanceof Error ? err.message : '');
  if (!m) return text.trim().length === 0 ? 'Unexpected end of string.' : 'Unexpected token.';
  const at = Number(m[1]);
  const lineStart = text.lastIndexOf('\n', at - 1) + 1;
  const lineEnd = text.indexOf('\n', at);
  const line = text.slice(lineStart, lineEnd === -1 ? undefined : lineEnd);
  const from = Math.max(0, at - lineStart - 40);
  return `Unexpected token.\n${line.slice(from, from + 80)}\n${' '.repeat(at - lineStart - from)}^`;
}

function isPeakNow(mode: PeakMode, o: SimulatorOptions): boolean {
  if (mode !== 'auto') return mode === 'on';
  return activePeakWindow(new Date(o.now()), o.peakWindows, o.timeZone) !== undefined;
}

/** Milliseconds until the next midnight in Pacific time, when per-day quotas reset. */
function msUntilPacificMidnight(now: number): number {
  return (1440 - minuteOfDay(new Date(now), 'America/Los_Angeles')) * 60_000 - (now % 60_000);
}

interface Live {
  readonly controller: AbortController;
  readonly res: ServerResponse;
}

/** What to answer, decided before the wait. */
type Plan =
  | { kind: 'error'; error: SimError; delayMs: number }
  | { kind: 'hang' }
  | { kind: 'answer'; delayMs: number; build: Promise<Answer>; delivery: 'normal' | 'truncate' | 'reset' };

export async function startSimulator(opts: Partial<SimulatorOptions> = {}): Promise<RunningSimulator> {
  const o = checkOptions(opts);
  let models = o.models as SimModel[];
  let peakMode = o.peak;
  const stats = new Map<string, ModelStats>();
  let log: SimRequestLog[] = [];
  let seq = 0;
  const buckets = new Map<string, TokenBucket>();
  const ledger = new MarkerLedger();
  /** How many times an identical request was seen, so repeats draw fresh but reproducible randomness. */
  const repeats = new Map<string, number>();
  const live = new Set<Live>();
  const sockets = new Set<Socket>();
  /** A simulated minute in real ms; with timeScale 0 it stays a real minute (see the header). */
  const minuteMs = 60_000 * (o.timeScale > 0 ? o.timeScale : 1);
  const scaled = (seconds: number): number => seconds * 1000 * o.timeScale;

  const statsFor = (id: string): ModelStats => {
    let s = stats.get(id);
    if (!s) stats.set(id, (s = emptyStats()));
    return s;
  };

  const requestRng = (model: SimModel, req: ParsedRequest, hash: string): ((purpose: string) => Rng) => {
    const key = [model.id, hash, req.size, req.aspectRatio, req.inputImages, req.includeThoughts, req.thinkingHigh].join('|');
    const n = (repeats.get(key) ?? 0) + 1;
    repeats.delete(key);
    repeats.set(key, n);
    if (repeats.size > 100_000) repeats.delete(repeats.keys().next().value as string);
    return (purpose) => rngFrom(o.seed, key, n, purpose);
  };

  /** Effective requests per minute for a model now, or undefined when unlimited. */
  const rpmFor = (model: SimModel, peak: boolean): number | undefined => {
    const base = o.quotas[model.id] ?? o.quotas[model.family];
    if (base === undefined) return undefined;
    return peak && model.family === 'fast' ? base * o.peakQuotaFactor : base;
  };

  const takeQuota = (model: SimModel, peak: boolean): SimError | undefined => {
    const rpm = rpmFor(model, peak);
    if (rpm === undefined) return undefined;
    let bucket = buckets.get(model.id);
    if (!bucket) buckets.set(model.id, (bucket = new TokenBucket()));
    const taken = bucket.take(o.now(), Math.max(1, rpm), rpm / minuteMs);
    if (taken.ok) return undefined;
    return quota429(model, 'minute', Math.max(1, Math.round(rpm)), taken.retryAfterMs);
  };

  const quota429 = (model: SimModel, scope: 'minute' | 'day', limit: number, retryAfterMs: number): SimError =>
    quotaExceeded({ scope, modelId: model.id, limit, retryAfterMs, retryText: goDuration(retryAfterMs), retryDelay: protoDuration(retryAfterMs) });

  /** The images an answer needs, rendered (or taken from the cache) while the latency runs. */
  const finalImage = (req: ParsedRequest, size: ImageSize): Promise<{ image: EncodedImage; size: ImageSize }> => {
    const { width, height } = pixelSize(size, req.aspectRatio);
    return encodedImage(o.outputMimeType, width, height).then((image) => ({ image, size }));
  };
  const thoughtImage = (req: ParsedRequest): Promise<EncodedImage | undefined> => {
    if (!req.includeThoughts) return Promise.resolve(undefined);
    const { width, height } = pixelSize('512', req.aspectRatio);
    return encodedImage('image/png', Math.round(width / 2), Math.round(height / 2));
  };

  const plan = (model: SimModel, req: ParsedRequest, markers: FaultMarker[], hash: string, entry: SimRequestLog): Plan => {
    const peak = isPeakNow(peakMode, o);
    const rng = requestRng(model, req, hash);
    const latencyRng = rng('latency');
    let seconds = generationSeconds(latencyRng, model.family, req.size);
    if (req.thinkingHigh) seconds += highThinkingSeconds(latencyRng);
    if (peak && model.family === 'fast') seconds *= o.peakLatencyFactor;
    const generationMs = scaled(seconds);
    const quickMs = (min: number, max: number): number => scaled(latencyRng.between(min, max));

    let fault = ledger.pick(markers, hash, model.family, model.id);
    if (fault === undefined) {
      const overQuota = takeQuota(model, peak);
      if (overQuota) {
        entry.plannedMs = quickMs(0.1, 0.6);
        return { kind: 'error', error: overQuota, delayMs: entry.plannedMs };
      }
      fault = pickRandomFault(rng('fault'), peak && model.family === 'fast' ? addRates(o.faultRates, o.peakFaultRates) : o.faultRates);
    }
    entry.fault = fault ?? null;
    if (fault) {
      const s = statsFor(model.id);
      s.faults[fault] = (s.faults[fault] ?? 0) + 1;
    }

    const bodyRng = rng('body');
    const ctx: AnswerContext = { modelId: model.id, family: model.family, request: req, rng: bodyRng, responseId: newResponseId(bodyRng) };
    const error = (e: SimError, delayMs: number): Plan => {
      entry.plannedMs = delayMs;
      return { kind: 'error', error: e, delayMs };
    };
    const answer = (build: Promise<Answer>, delayMs = generationMs, delivery: 'normal' | 'truncate' | 'reset' = 'normal'): Plan => {
      entry.plannedMs = delayMs;
      // The wait may end in an abort before anyone awaits the build.
      build.catch(() => undefined);
      return { kind: 'answer', delayMs, build, delivery };
    };
    const withImages = async (sizes: ImageSize[], degraded = false): Promise<Answer> => {
      const [finals, thought] = await Promise.all([Promise.all(sizes.map((s) => finalImage(req, s))), thoughtImage(req)]);
      return imageAnswer(ctx, { finals, ...(thought ? { thoughtImage: thought } : {}), degraded });
    };
    const normal = (): Promise<Answer> => (req.wantImage ? withImages([req.size]) : Promise.resolve(textAnswer(ctx, 'STOP')));

    switch (fault) {
      case undefined:
        return answer(normal());
      case '429':
        return error(quota429(model, 'minute', Math.max(1, Math.round(rpmFor(model, peak) ?? NOMINAL_RPM)), latencyRng.between(1, 60) * minuteMs / 60), quickMs(0.1, 0.6));
      case '429-day':
        return error(quota429(model, 'day', DAY_LIMIT, msUntilPacificMidnight(o.now()) * (minuteMs / 60_000)), quickMs(0.1, 0.6));
      case '429-bare':
        return error(resourceExhaustedBare(), quickMs(0.1, 0.6));
      case '500':
        return error(internalError(), generationMs * latencyRng.between(0.1, 0.9));
      case '503':
        return error(overloaded(), quickMs(0.2, 2));
      case 'hang':
        entry.plannedMs = o.hangMaxMs;
        return { kind: 'hang' };
      case 'truncate':
        return answer(normal(), generationMs, 'truncate');
      case 'reset':
        return answer(normal(), generationMs, 'reset');
      case 'image-safety':
        return answer(Promise.resolve(textAnswer(ctx, 'IMAGE_SAFETY')));
      case 'no-image':
        return answer(Promise.resolve(emptyAnswer(ctx, 'NO_IMAGE')));
      case 'image-other':
        return answer(Promise.resolve(emptyAnswer(ctx, 'IMAGE_OTHER')));
      case 'block':
        return answer(Promise.resolve(blockedAnswer(ctx)), quickMs(1, 3));
      case 'degrade':
        return answer(withImages([req.size], true));
      case 'two-images':
        return answer(withImages([req.size === '1K' ? '512' : '1K', req.size]));
      case 'text-only':
        return answer(Promise.resolve(textAnswer(ctx, 'STOP')));
    }
  };

  const handleGenerate = async (req: IncomingMessage, res: ServerResponse, apiVersion: string, modelId: string, url: URL): Promise<void> => {
    const started = performance.now();
    const s = statsFor(modelId);
    s.requests++;
    s.inFlight++;
    const entry: SimRequestLog = {
      seq: ++seq, at: o.now(), model: modelId, family: null, promptHash: promptHash(''), prompt: '', size: null, aspectRatio: null,
      inputImages: 0, status: null, fault: null, aborted: false, plannedMs: null, durationMs: null,
    };
    log.push(entry);
    if (log.length > o.requestLogSize) log = log.slice(-o.requestLogSize);

    const controller = new AbortController();
    const item: Live = { controller, res };
    live.add(item);
    let endedByUs = false;
    /** Set when a fault-free answer is being sent; counted once it is fully written. */
    let okAnswer = false;
    res.on('close', () => {
      live.delete(item);
      s.inFlight--;
      entry.durationMs = performance.now() - started;
      if (res.writableFinished) {
        if (okAnswer) s.ok++;
      } else if (!endedByUs) {
        s.aborted++;
        entry.aborted = true;
        entry.status = null;
      }
      controller.abort();
    });

    const reply = (status: number, body: unknown): void => {
      entry.status = status;
      if (status === 429) s.rateLimited++;
      else if (status === 400 || status === 404) s.rejected++;
      sendJson(res, status, body);
    };
    const fail = (e: SimError): void => reply(e.status, e.body);

    let raw: { body: Buffer; tooLarge: boolean };
    try {
      raw = await readBody(req, o.maxBodyBytes);
    } catch {
      return; // the client went away while sending; 'close' has counted it
    }
    const key = req.headers['x-goog-api-key'] ?? url.searchParams.get('key') ?? '';
    const keyText = Array.isArray(key) ? (key[0] ?? '') : key;
    if (keyText.length === 0 || (o.apiKeys.length > 0 && !o.apiKeys.includes(keyText))) return fail(apiKeyInvalid());
    if (raw.tooLarge) return fail(payloadTooLarge(o.maxBodyBytes));

    const text = raw.body.toString('utf8');
    let json: unknown;
    try {
      // An empty body is an empty message in proto-JSON.
      json = text.trim().length === 0 ? {} : JSON.parse(text);
    } catch (err) {
      return fail(invalidJson(jsonSyntaxReason(text, err)));
    }

    const seen = describeRequest(json);
    Object.assign(entry, { promptHash: promptHash(seen.prompt), prompt: seen.prompt.slice(0, 80), size: seen.size, aspectRatio: seen.aspectRatio });

    const model = models.find((m) => m.id === modelId);
    if (!model) return fail(modelNotFound(modelId, apiVersion));
    entry.family = model.family;

    const parsed = parseGenerateRequest(json, model.family);
    if (!parsed.ok) return fail(parsed.error);
    const request = parsed.request;
    const hash = promptHash(request.prompt);
    entry.inputImages = request.inputImages;
    let markers: FaultMarker[];
    try {
      markers = parseMarkers(request.prompt);
    } catch (err) {
      return fail(invalidArgument(`Simulator: ${(err as Error).message}`));
    }

    const p = plan(model, request, markers, hash, entry);
    if (p.kind === 'hang') {
      if (await wait(o.hangMaxMs, controller.signal)) fail(deadlineExceeded());
      return;
    }
    if (!(await wait(p.delayMs, controller.signal))) return;
    if (p.kind === 'error') return fail(p.error);

    const answer = await p.build;
    if (controller.signal.aborted) return;
    const { chunks, length } = serializeAnswer(answer);
    entry.status = 200;
    okAnswer = entry.fault === null;
    const headers = { 'content-type': 'application/json; charset=UTF-8' };
    if (p.delivery === 'truncate') {
      const cut = Buffer.concat(chunks).subarray(0, Math.floor(length / 2));
      res.writeHead(200, { ...headers, 'content-length': cut.length });
      res.end(cut);
    } else if (p.delivery === 'reset') {
      const half = Buffer.concat(chunks).subarray(0, Math.floor(length / 2));
      res.writeHead(200, { ...headers, 'content-length': length });
      endedByUs = true;
      res.write(half, () => res.destroy());
    } else {
      res.writeHead(200, { ...headers, 'content-length': length });
      for (const c of chunks) res.write(c);
      res.end();
    }
  };

  const modelResource = (m: SimModel): Record<string, unknown> => ({
    name: `models/${m.id}`,
    version: m.family === 'fast' ? '3.1' : '3.0',
    displayName: `${FAMILY_LABEL[m.family]} (${m.id})`,
    description: `Simulated ${FAMILY_LABEL[m.family]} image model.`,
    inputTokenLimit: 65_536,
    outputTokenLimit: 32_768,
    supportedGenerationMethods: ['generateContent', 'countTokens', 'batchGenerateContent'],
    temperature: 1,
    topP: 0.95,
    maxTemperature: 2,
    thinking: true,
  });

  const readJson = async (req: IncomingMessage): Promise<unknown> => {
    const { body, tooLarge } = await readBody(req, 1024 * 1024);
    if (tooLarge) throw new Error('body too large');
    return body.length === 0 ? {} : JSON.parse(body.toString('utf8'));
  };

  const setModels = (next: readonly SimModel[]): void => {
    models = checkModels(next);
  };

  const reset = (): void => {
    // Zeroed in place: requests still in flight hold their model's counters and decrement inFlight later.
    for (const [id, st] of stats) {
      if (st.inFlight === 0) stats.delete(id);
      else Object.assign(st, { ...emptyStats(), inFlight: st.inFlight });
    }
    log = [];
    seq = 0;
    buckets.clear();
    ledger.clear();
    repeats.clear();
  };

  const snapshot = (): SimulatorStats =>
    Object.fromEntries([...stats].map(([id, st]) => [id, { ...st, faults: { ...st.faults } }]));

  const handleControl = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const route = `${req.method} ${url.pathname}`;
    try {
      switch (route) {
        case 'GET /_sim/stats':
          return sendJson(res, 200, snapshot());
        case 'POST /_sim/reset':
          await readBody(req, 1024 * 1024);
          reset();
          return sendJson(res, 200, { reset: true });
        case 'GET /_sim/requests': {
          const prompt = url.searchParams.get('prompt');
          const model = url.searchParams.get('model');
          const wanted = prompt === null ? undefined : promptHash(prompt);
          return sendJson(res, 200, log.filter((e) => (wanted === undefined || e.promptHash === wanted) && (model === null || e.model === model)));
        }
        case 'GET /_sim/models':
          return sendJson(res, 200, { models });
        case 'POST /_sim/models': {
          const body = await readJson(req);
          setModels((Array.isArray(body) ? body : (body as { models?: unknown }).models) as SimModel[]);
          return sendJson(res, 200, { models });
        }
        case 'GET /_sim/peak':
          return sendJson(res, 200, { peak: peakMode, active: isPeakNow(peakMode, o) });
        case 'POST /_sim/peak': {
          const body = (await readJson(req)) as { peak?: unknown };
          peakMode = checkPeak(body.peak);
          return sendJson(res, 200, { peak: peakMode, active: isPeakNow(peakMode, o) });
        }
        case 'GET /_sim/config':
          return sendJson(res, 200, {
            models, peak: peakMode, peakActive: isPeakNow(peakMode, o), peakWindows: o.peakWindows.map((w) => w.label), timeZone: o.timeZone,
            timeScale: o.timeScale, seed: o.seed, quotas: o.quotas, faultRates: o.faultRates, peakFaultRates: o.peakFaultRates,
            outputMimeType: o.outputMimeType, apiKeysRequired: o.apiKeys.length > 0,
          });
        default:
          return sendJson(res, 404, pathNotFound().body);
      }
    } catch (err) {
      return sendJson(res, 400, invalidArgument(`Simulator: ${(err as Error).message}`).body);
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://simulator');
    let path: string;
    try {
      path = decodeURIComponent(url.pathname);
    } catch {
      path = url.pathname;
    }
    if (path.startsWith('/_sim/')) return handleControl(req, res, url);

    const generate = GENERATE_PATH.exec(path);
    if (generate) {
      if (req.method !== 'POST') {
        req.resume();
        return sendJson(res, 405, methodNotAllowed().body);
      }
      return handleGenerate(req, res, generate[1]!, generate[2]!, url);
    }
    req.resume();
    const listing = MODEL_PATH.exec(path);
    if (listing && req.method === 'GET') {
      const key = req.headers['x-goog-api-key'] ?? url.searchParams.get('key') ?? '';
      const keyText = Array.isArray(key) ? (key[0] ?? '') : key;
      if (keyText.length === 0 || (o.apiKeys.length > 0 && !o.apiKeys.includes(keyText))) return sendJson(res, 400, apiKeyInvalid().body);
      const id = listing[2];
      if (id === undefined) return sendJson(res, 200, { models: models.map(modelResource) });
      const m = models.find((x) => x.id === id);
      return m ? sendJson(res, 200, modelResource(m)) : sendJson(res, 404, modelNotFound(id, listing[1]!).body);
    }
    return sendJson(res, 404, pathNotFound().body);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // A bug here must not take the simulator down; answer like Google's 500 if still possible.
      if (!res.headersSent && !res.destroyed) sendJson(res, 500, internalError().body);
      else res.destroy(err instanceof Error ? err : undefined);
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const hostForUrl = o.host.includes(':') ? `[${o.host}]` : o.host;
  let closing: Promise<void> | undefined;

  return {
    url: `http://${hostForUrl}:${port}`,
    port,
    stats: snapshot,
    requests: () => log.map((e) => ({ ...e })),
    models: () => models.map((m) => ({ ...m })),
    setModels,
    setPeak: (p) => {
      peakMode = checkPeak(p);
    },
    isPeak: () => isPeakNow(peakMode, o),
    reset,
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const l of live) {
          l.controller.abort();
          l.res.destroy();
        }
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}

/**
 * Options from `pixelmill simulate` flags: --port N --host H --time-scale X --seed S
 * --peak on|off|auto --peak-windows 10:00-14:00 --time-zone UTC --quota-fast RPM --quota-pro RPM
 * --models id=fast,id2=pro --api-key K (repeatable) --png --fault-rate 429=0.05,503=0.02
 * --peak-fault-rate degrade=0.1 --hang-max-ms MS. Throws an Error naming the flag on bad input.
 */
export function parseSimulatorArgs(argv: string[]): Partial<SimulatorOptions> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      'time-scale': { type: 'string' },
      seed: { type: 'string' },
      peak: { type: 'string' },
      'peak-windows': { type: 'string' },
      'time-zone': { type: 'string' },
      'quota-fast': { type: 'string' },
      'quota-pro': { type: 'string' },
      models: { type: 'string' },
      'api-key': { type: 'string', multiple: true },
      png: { type: 'boolean' },
      'fault-rate': { type: 'string' },
      'peak-fault-rate': { type: 'string' },
      'hang-max-ms': { type: 'string' },
    },
  });
  const num = (flag: string, raw: string, check: (n: number) => boolean, what: string): number => {
    const n = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(n) || !check(n)) throw new Error(`--${flag} must be ${what}, not "${raw}"`);
    return n;
  };
  const rates = (flag: string, raw: string): Partial<Record<Fault, number>> => {
    const out: Record<string, number> = {};
    for (const pair of raw.split(',').map((x) => x.trim()).filter(Boolean)) {
      const [name = '', value = ''] = pair.split('=');
      out[name] = num(flag, value, (n) => n >= 0 && n <= 1, 'a list of fault=probability with probabilities in [0, 1]');
    }
    return checkRates(out, `--${flag}`);
  };

  const opts: Partial<SimulatorOptions> = {};
  if (values.port !== undefined) opts.port = num('port', values.port, (n) => Number.isInteger(n) && n >= 0 && n <= 65_535, 'a port number 0-65535');
  if (values.host !== undefined) opts.host = values.host;
  if (values['time-scale'] !== undefined) opts.timeScale = num('time-scale', values['time-scale'], (n) => n >= 0, 'a number >= 0');
  if (values.seed !== undefined) opts.seed = num('seed', values.seed, Number.isInteger, 'an integer');
  if (values.peak !== undefined) {
    try {
      opts.peak = checkPeak(values.peak);
    } catch {
      throw new Error(`--peak must be auto, on or off, not "${values.peak}"`);
    }
  }
  if (values['peak-windows'] !== undefined) {
    try {
      opts.peakWindows = parsePeakWindows(values['peak-windows']);
    } catch (err) {
      throw new Error(`--peak-windows: ${(err as Error).message}`);
    }
  }
  if (values['time-zone'] !== undefined) {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: values['time-zone'] });
    } catch {
      throw new Error(`--time-zone must be an IANA time zone such as UTC or Europe/Paris, not "${values['time-zone']}"`);
    }
    opts.timeZone = values['time-zone'];
  }
  const quotas: SimQuotas = {};
  if (values['quota-fast'] !== undefined) quotas.fast = num('quota-fast', values['quota-fast'], (n) => n > 0, 'requests per minute > 0');
  if (values['quota-pro'] !== undefined) quotas.pro = num('quota-pro', values['quota-pro'], (n) => n > 0, 'requests per minute > 0');
  if (Object.keys(quotas).length > 0) opts.quotas = quotas;
  if (values.models !== undefined) {
    const list = values.models.split(',').map((x) => x.trim()).filter(Boolean).map((pair) => {
      const [id = '', family = ''] = pair.split('=');
      if (!MODEL_ID.test(id) || !MODEL_FAMILIES.includes(family as ModelFamily)) {
        throw new Error(`--models must be a list of id=fast or id=pro, not "${pair}"`);
      }
      return { id, family: family as ModelFamily };
    });
    opts.models = checkModels(list);
  }
  if (values['api-key'] !== undefined) {
    if (values['api-key'].some((k) => k.length === 0)) throw new Error('--api-key must not be empty');
    opts.apiKeys = values['api-key'];
  }
  if (values.png) opts.outputMimeType = 'image/png';
  if (values['fault-rate'] !== undefined) opts.faultRates = rates('fault-rate', values['fault-rate']);
  if (values['peak-fault-rate'] !== undefined) opts.peakFaultRates = rates('peak-fault-rate', values['peak-fault-rate']);
  if (values['hang-max-ms'] !== undefined) {
    opts.hangMaxMs = num('hang-max-ms', values['hang-max-ms'], (n) => Number.isInteger(n) && n >= 0, 'a whole number of ms');
  }
  return opts;
}
