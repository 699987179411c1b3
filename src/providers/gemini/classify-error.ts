/**
 * Turns a non-2xx generateContent answer into a PixelmillError (shared/reference/gemini-image-api.md §3).
 * Pure: no I/O, no logging.
 *
 * The envelope is `{"error":{code,message,status,details[]}}`; the OpenAI-compatible layer and some
 * gateways wrap it in an array (`[{"error":{…}}]`), and proxies may answer with HTML or nothing at all, so
 * every field is optional and the raw text stands in for a missing message.
 *
 * Gemini sends no Retry-After header on 429: the delay is in details[google.rpc.RetryInfo].retryDelay
 * (a protobuf Duration such as "47s" or "34.4s") and again in the message ("Please retry in 47.88s.").
 */
import { PixelmillError, type ErrorCode } from '../../errors/catalogue.js';
import { quote } from './parse-response.js';

type Json = Record<string, unknown>;

export type QuotaScope = 'minute' | 'day' | 'unknown';

interface Envelope {
  code: number | null;
  message: string | null;
  status: string | null;
  details: Json[];
}

function isRecord(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function readEnvelope(bodyText: string): Envelope | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bodyText);
  } catch {
    return null;
  }
  if (Array.isArray(parsed)) parsed = parsed[0];
  if (!isRecord(parsed) || !isRecord(parsed.error)) return null;
  const e = parsed.error;
  return {
    code: typeof e.code === 'number' ? e.code : null,
    message: typeof e.message === 'string' && e.message.trim() !== '' ? e.message : null,
    status: typeof e.status === 'string' && e.status !== '' ? e.status : null,
    details: Array.isArray(e.details) ? e.details.filter(isRecord) : [],
  };
}

function detailsOfType(env: Envelope | null, type: string): Json[] {
  return (env?.details ?? []).filter((d) => typeof d['@type'] === 'string' && (d['@type'] as string).endsWith(`google.rpc.${type}`));
}

/** Seconds written as a decimal string → whole ms, rounded up so a retry never comes early. */
function decimalSecondsToMs(whole: string, fraction = ''): number {
  const digits = `${fraction}000`;
  const ms = Number(whole) * 1000 + Number(digits.slice(0, 3));
  return /[1-9]/.test(digits.slice(3)) ? ms + 1 : ms;
}

/** A protobuf Duration as proto-JSON ("47s", "34.4s", "45.837906927s") or as {seconds, nanos} → ms. */
export function parseRetryDelayMs(value: unknown): number | undefined {
  if (typeof value === 'string') {
    const m = /^(\d+)(?:\.(\d+))?s$/.exec(value.trim());
    return m ? decimalSecondsToMs(m[1]!, m[2]) : undefined;
  }
  if (isRecord(value)) {
    const seconds = Number(value.seconds ?? 0);
    const nanos = Number(value.nanos ?? 0);
    if (Number.isFinite(seconds) && Number.isFinite(nanos) && seconds >= 0 && nanos >= 0) {
      return seconds * 1000 + Math.ceil(nanos / 1e6);
    }
  }
  return undefined;
}

/** "Please retry in 47.884324799s." (or "…in 590.4ms.") in the message text → ms. */
export function retryDelayFromMessage(message: string): number | undefined {
  const m = /retry in (\d+)(?:\.(\d+))?(ms|s)\b/i.exec(message);
  if (!m) return undefined;
  return m[3]!.toLowerCase() === 'ms' ? Math.ceil(Number(`${m[1]}.${m[2] ?? '0'}`)) : decimalSecondsToMs(m[1]!, m[2]);
}

interface QuotaFacts {
  quotaScope: QuotaScope;
  quotaId?: string;
  quotaMetric?: string;
  /**
   * The limit the provider announced for a requests-per-minute quota (QuotaFailure quotaValue, a
   * string such as "20"): the lane's real ceiling. Absent for token and per-day quotas, and when the
   * body has no quotaValue (the `limit: 0` case, detail-less 429s).
   */
  requestsPerMinute?: number;
}

/** A per-day quota will not reset within a backoff; the worker reads `quotaScope` to decide. */
function quotaFacts(env: Envelope | null): QuotaFacts {
  const violations: Json[] = [];
  for (const failure of detailsOfType(env, 'QuotaFailure')) {
    if (Array.isArray(failure.violations)) violations.push(...failure.violations.filter(isRecord));
  }
  const idOf = (v: Json): string => (typeof v.quotaId === 'string' ? v.quotaId : '');
  const perDay = violations.find((v) => idOf(v).includes('PerDay'));
  const perMinute = violations.find((v) => idOf(v).includes('PerMinute'));
  const decisive = perDay ?? perMinute ?? violations[0];
  const facts: QuotaFacts = { quotaScope: perDay ? 'day' : perMinute ? 'minute' : 'unknown' };
  if (decisive && typeof decisive.quotaId === 'string') facts.quotaId = decisive.quotaId;
  if (decisive && typeof decisive.quotaMetric === 'string') facts.quotaMetric = decisive.quotaMetric;
  // Only a requests quota paces calls one for one; a tokens-per-minute limit is a different unit.
  const requests = violations.find((v) => /PerMinute/.test(idOf(v)) && /Requests/.test(idOf(v)) && !/Token/i.test(idOf(v)));
  const announced = typeof requests?.quotaValue === 'string' && /^\d+(\.\d+)?$/.test(requests.quotaValue.trim()) ? Number(requests.quotaValue) : NaN;
  if (!perDay && announced > 0) facts.requestsPerMinute = announced;
  return facts;
}

function errorInfoReasons(env: Envelope | null): string[] {
  return detailsOfType(env, 'ErrorInfo')
    .map((d) => d.reason)
    .filter((r): r is string => typeof r === 'string');
}

/**
 * Classify a non-2xx answer: 429 → RATE_LIMITED (retryAfterMs, details.quotaScope/quotaId/quotaMetric, and
 * details.requestsPerMinute when the body announced a per-minute request quota);
 * 400 → INVALID_REQUEST, except a rejected key (API_KEY_INVALID) or an account precondition
 * (FAILED_PRECONDITION: billing, region) → UPSTREAM_AUTH; 401/402/403 → UPSTREAM_AUTH; 404 → MODEL_NOT_FOUND;
 * 408/504 → UPSTREAM_TIMEOUT; other 4xx → INVALID_REQUEST; 5xx (and anything else) → UPSTREAM_UNAVAILABLE.
 */
export function classifyErrorResponse(status: number, bodyText: string, modelId: string): PixelmillError {
  const env = readEnvelope(bodyText);
  const upstreamText = env?.message ?? (bodyText.trim() !== '' ? bodyText : null);
  const said = upstreamText ? `: "${quote(upstreamText)}"` : ' with an empty body';
  const label = [String(status), env?.status].filter(Boolean).join(' ');
  const reasons = errorInfoReasons(env);
  const details: Json = { upstreamStatus: status };
  if (env?.status) details.upstreamCode = env.status;
  if (reasons.length > 0) details.reasons = reasons;

  const fail = (code: ErrorCode, what: string, retryAfterMs?: number): PixelmillError =>
    new PixelmillError(code, `${what} (${label})${said}`, retryAfterMs === undefined ? { details } : { details, retryAfterMs });

  if (status === 429) {
    const quota = quotaFacts(env);
    Object.assign(details, quota);
    const retryInfo = detailsOfType(env, 'RetryInfo')[0];
    const retryAfterMs = parseRetryDelayMs(retryInfo?.retryDelay) ?? retryDelayFromMessage(upstreamText ?? '');
    const when = retryAfterMs === undefined ? 'no retry delay given' : `retry in ${retryAfterMs} ms`;
    const which = quota.quotaId ? `quota ${quota.quotaId}` : `${quota.quotaScope} quota`;
    return fail('RATE_LIMITED', `${modelId} is rate limited, ${which}, ${when}`, retryAfterMs);
  }
  if (status === 400) {
    if (reasons.includes('API_KEY_INVALID') || /API key not valid/i.test(upstreamText ?? '')) {
      return fail('UPSTREAM_AUTH', 'Gemini rejected the API key');
    }
    // Billing not enabled, free tier unavailable in the region: every job would fail the same way, so this
    // is an account problem, not a problem of this job's fields.
    if (env?.status === 'FAILED_PRECONDITION') {
      return fail('UPSTREAM_AUTH', `Gemini refused to serve ${modelId} to this account`);
    }
    return fail('INVALID_REQUEST', `${modelId} rejected the request`);
  }
  if (status === 401 || status === 403) return fail('UPSTREAM_AUTH', `Gemini refused the API key for ${modelId}`);
  if (status === 402) return fail('UPSTREAM_AUTH', 'the Gemini prepayment credits are depleted; top them up in AI Studio billing');
  if (status === 404) return fail('MODEL_NOT_FOUND', `model ${modelId} was not found (retired or misspelled)`);
  if (status === 408 || status === 504) return fail('UPSTREAM_TIMEOUT', `${modelId} timed out upstream`);
  if (status >= 400 && status < 500) return fail('INVALID_REQUEST', `${modelId} rejected the request`);
  return fail('UPSTREAM_UNAVAILABLE', `${modelId} is unavailable`);
}
