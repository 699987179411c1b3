/**
 * Configuration: one zod schema, parsed once from the environment at process start, frozen, and
 * passed down. No other module reads `process.env` (enforced by eslint's no-restricted-properties).
 *
 * Every variable is documented in README.md ("Configuration"); keep the two in step.
 */
import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { parsePeakWindows, type PeakWindow } from '../routing/peak-windows.js';

const boolFromEnv = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'], { message: 'must be true or false' })
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const intFromEnv = (min: number, max: number) =>
  z.coerce
    .number({ message: 'must be a number' })
    .int({ message: 'must be a whole number' })
    .min(min, { message: `must be at least ${min}` })
    .max(max, { message: `must be at most ${max}` });

const modelIdList = z
  .string()
  .transform((s) => s.split(',').map((x) => x.trim()).filter(Boolean))
  .pipe(
    z
      .array(z.string().regex(/^[a-z0-9][a-z0-9.-]*$/, { message: 'model ids are lowercase letters, digits, dots and dashes' }))
      .min(1, { message: 'needs at least one model id' }),
  );

const ianaZone = z.string().refine(
  (tz) => {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: tz });
      return true;
    } catch {
      return false;
    }
  },
  { message: 'must be an IANA time zone such as UTC or Europe/Paris' },
);

const peakWindows = z.string().transform((s, ctx): PeakWindow[] => {
  try {
    return parsePeakWindows(s);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

/** `tenant:key` pairs, comma-separated. */
const apiKeys = z.string().transform((s, ctx) => {
  const pairs: { tenant: string; key: string }[] = [];
  for (const raw of s.split(',').map((x) => x.trim()).filter(Boolean)) {
    const idx = raw.indexOf(':');
    const tenant = idx > 0 ? raw.slice(0, idx) : '';
    const key = idx > 0 ? raw.slice(idx + 1) : '';
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(tenant) || key.length < 16) {
      ctx.addIssue({ code: 'custom', message: 'each entry must be tenant:key, tenant of [A-Za-z0-9_-], key of at least 16 characters' });
      return z.NEVER;
    }
    pairs.push({ tenant, key });
  }
  return pairs;
});

/** `whsec_<base64 of 24..64 random bytes>`, several separated by spaces (every delivery is signed with all). */
const webhookSecrets = z.string().transform((s, ctx) => {
  const secrets = s.split(/\s+/).filter(Boolean);
  for (const secret of secrets) {
    const raw = secret.startsWith('whsec_') ? Buffer.from(secret.slice(6), 'base64') : undefined;
    if (!raw || raw.length < 24 || raw.length > 64) {
      ctx.addIssue({ code: 'custom', message: 'each secret must be whsec_ followed by the base64 of 24 to 64 random bytes' });
      return z.NEVER;
    }
  }
  return secrets;
});

/** Comma-separated CIDRs (IPv4 or IPv6). */
const cidrList = z.string().transform((s, ctx) => {
  const cidrs = s.split(',').map((x) => x.trim()).filter(Boolean);
  for (const c of cidrs) {
    if (!ipaddr.isValidCIDR(c)) {
      ctx.addIssue({ code: 'custom', message: `"${c}" is not a CIDR such as 10.0.0.0/8 or fd00::/8` });
      return z.NEVER;
    }
  }
  return cidrs;
});

/** Duration like `390s`, `5m`, `250ms` or plain milliseconds. */
const durationMs = z.string().transform((s, ctx) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(s.trim());
  if (!m) {
    ctx.addIssue({ code: 'custom', message: 'must be a duration such as 500ms, 30s, 5m, 2h or 7d' });
    return z.NEVER;
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 'ms']!;
  return Math.round(Number(m[1]) * unit);
});

const durationList = z.string().transform((s, ctx) => {
  const out: number[] = [];
  for (const part of s.split(',').map((x) => x.trim()).filter(Boolean)) {
    const parsed = durationMs.safeParse(part);
    if (!parsed.success) {
      ctx.addIssue({ code: 'custom', message: `"${part}" is not a duration such as 0s, 5s, 5m or 2h` });
      return z.NEVER;
    }
    out.push(parsed.data);
  }
  if (out.length === 0) {
    ctx.addIssue({ code: 'custom', message: 'needs at least one delay' });
    return z.NEVER;
  }
  return out;
});

export const configSchema = z
  .object({
    NODE_ENV: z.enum(['production', 'development', 'test']).default('production'),
    LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

    // Redis and the queue
    REDIS_URL: z.url({ protocol: /^rediss?$/, message: 'must be a redis:// or rediss:// URL' }).default('redis://127.0.0.1:6379'),
    QUEUE_PREFIX: z.string().regex(/^[A-Za-z0-9_{}-]{1,64}$/, { message: 'letters, digits, _ - { } only' }).default('pixelmill'),
    JOB_RETENTION: durationMs.default(7 * 86_400_000),
    EVENTS_MAX_LEN: intFromEnv(100, 1_000_000).default(10_000),

    // Object storage (S3 or compatible)
    S3_ENDPOINT: z.url({ message: 'must be a URL such as http://127.0.0.1:9000' }).optional(),
    S3_REGION: z.string().min(1).default('us-east-1'),
    S3_BUCKET: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, { message: 'must be a valid S3 bucket name' }).default('pixelmill'),
    S3_ACCESS_KEY_ID: z.string().min(1).optional(),
    S3_SECRET_ACCESS_KEY: z.string().min(1).optional(),
    S3_FORCE_PATH_STYLE: boolFromEnv.optional(),
    S3_KEY_PREFIX: z
      .string()
      .regex(/^[A-Za-z0-9!_.*'()/-]{0,200}$/, { message: 'S3-safe characters only' })
      .transform((s) => s.replace(/^\/+|\/+$/g, ''))
      .default('images'),
    PRESIGN_TTL: durationMs.default(3_600_000),

    // Gemini
    GEMINI_API_KEY: z.string().min(1).optional(),
    GEMINI_BASE_URL: z.url({ message: 'must be a URL' }).default('https://generativelanguage.googleapis.com'),
    MODEL_FAST: modelIdList.default(['gemini-3.1-flash-image', 'gemini-3.1-flash-image-preview']),
    MODEL_PRO: modelIdList.default(['gemini-3-pro-image', 'gemini-3-pro-image-preview']),
    UPSTREAM_TIMEOUT_MS: intFromEnv(1, 3_600_000).default(360_000),

    // Routing
    PEAK_WINDOWS: peakWindows.default(parsePeakWindows('10:00-14:00')),
    PEAK_TIMEZONE: ianaZone.default('UTC'),

    // Worker
    WORKER_CONCURRENCY: intFromEnv(1, 1000).optional(),
    /** Generated images one worker holds between the model's answer and its upload (src/worker/answer-gate.ts). */
    WORKER_MAX_PENDING_UPLOADS: intFromEnv(1, 1000).default(32),
    MAX_ATTEMPTS: intFromEnv(1, 50).default(5),
    BACKOFF_BASE_MS: intFromEnv(1, 3_600_000).default(2_000),
    BACKOFF_CAP_MS: intFromEnv(1, 86_400_000).default(120_000),
    RATE_LIMIT_MAX_REQUEUES: intFromEnv(0, 100_000).default(200),
    SHUTDOWN_GRACE: durationMs.default(390_000),
    WORKER_LOCK_DURATION_MS: intFromEnv(1_000, 3_600_000).default(30_000),
    WORKER_STALLED_INTERVAL_MS: intFromEnv(1_000, 3_600_000).default(30_000),
    INPUT_IMAGE_MAX_BYTES: intFromEnv(1, 100 * 1024 * 1024).default(7 * 1024 * 1024),

    // Webhooks and URLs fetched by the service (Standard Webhooks; SSRF guard)
    WEBHOOK_SECRET: webhookSecrets.optional(),
    WEBHOOK_RETRY_SCHEDULE: durationList.default([0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 50_400_000, 72_000_000, 86_400_000]),
    WEBHOOK_TIMEOUT_MS: intFromEnv(100, 300_000).default(15_000),
    WEBHOOK_ALLOWED_CIDRS: cidrList.default([]),
    WEBHOOK_CONCURRENCY: intFromEnv(1, 1000).default(32),
    INPUT_URL_MAX_BYTES: intFromEnv(1, 1024 * 1024 * 1024).default(20 * 1024 * 1024),
    INPUT_URL_TIMEOUT_MS: intFromEnv(100, 600_000).default(30_000),

    // HTTP API
    PORT: intFromEnv(0, 65_535).default(8080),
    HOST: z.string().min(1).optional(),
    API_KEYS: apiKeys.default([]),
    /** Bearer token of GET /metrics (fleet-wide: every tenant's spend); required there when API_KEYS is set. */
    METRICS_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
    API_BODY_LIMIT_BYTES: intFromEnv(1024, 1024 * 1024 * 1024).default(100 * 1024 * 1024),

    // Shared model lanes (src/lanes): one lane per (model id, API key); GEMINI_API_KEY may list several keys, comma-separated
    MODEL_FAST_RPM: intFromEnv(1, 1_000_000).optional(),
    MODEL_PRO_RPM: intFromEnv(1, 1_000_000).optional(),
    LANES_ENABLED: boolFromEnv.default(true),
    LANE_INITIAL_RPM: z.coerce.number({ message: 'must be a number' }).min(0.1).max(1_000_000).optional(),
    LANE_MIN_RPM: z.coerce.number({ message: 'must be a number' }).min(0.01).max(1_000_000).default(1),
    LANE_AIMD_STEP_RPM: z.coerce.number({ message: 'must be a number' }).min(0).max(10_000).default(1),
    LANE_AIMD_DECREASE: z.coerce.number({ message: 'must be a number' }).gt(0).lt(1).default(0.5),
    /** The period the provider counts a per-minute quota over; the first 429 learns the rate from the calls admitted in it. */
    LANE_RATE_WINDOW: durationMs.default(60_000),
    LANE_BURST: intFromEnv(1, 10_000).default(5),
    LANE_MAX_INFLIGHT: intFromEnv(1, 1_000_000).optional(),
    LANE_MAX_HOLD_MS: intFromEnv(0, 60_000).default(250),
    /** The share of a worker's slots standard jobs may hold on Pro before Nano Banana 2 refuses them (0 = none). */
    LANE_SHARE_SLOTS: z.coerce.number({ message: 'must be a number' }).min(0).max(1).default(0.25),
    LANE_AUTH_DISABLE_TTL: durationMs.default(3_600_000),

    // Model health and circuit breakers (issue 4 §2, src/health/)
    /** Length of the sliding window of per-model health (call count, latency, 429 / failure / degraded rates). */
    HEALTH_WINDOW: durationMs.default(300_000),
    /** Granularity of that window: one Redis hash per bucket, expired as the window slides past it. */
    HEALTH_BUCKET: durationMs.default(10_000),
    /** A model is throttled when its 429 rate over the window reaches this share of its calls... */
    HEALTH_THROTTLE_429_RATE: z.coerce.number({ message: 'must be a number' }).min(0.01).max(1).default(0.3),
    /** ...and it had at least this many calls in the window (a few 429s of a quiet model mean nothing). */
    HEALTH_MIN_CALLS: intFromEnv(1, 1_000_000).default(20),
    /** Consecutive failures (timeout, 5xx, unreadable answer) that open a model's circuit breaker. */
    BREAKER_FAILURES: intFromEnv(1, 10_000).default(5),
    /** How long an open breaker stays open before it admits one probe call (half-open). */
    BREAKER_OPEN_MS: durationMs.default(30_000),

    // Output validation and budgets (issue 4 §3–4, VALUE: src/worker/output-check.ts, src/budget/)
    /** What a degraded 200 (wrong MIME type, pixel size or model version) does per tier: keep it flagged, or retry. */
    DEGRADED_ACTION_DRAFT: z.enum(['accept', 'retry'], { message: 'must be accept or retry' }).default('accept'),
    DEGRADED_ACTION_STANDARD: z.enum(['accept', 'retry'], { message: 'must be accept or retry' }).default('retry'),
    DEGRADED_ACTION_PREMIUM: z.enum(['accept', 'retry'], { message: 'must be accept or retry' }).default('retry'),
    /** Optional spend cap per tenant per UTC day, USD (list-price reservations count against it). */
    TENANT_DAILY_BUDGET_USD: z.coerce.number({ message: 'must be a number' }).positive({ message: 'must be more than 0' }).optional(),
  })
  .superRefine((c, ctx) => {
    if ((c.S3_ACCESS_KEY_ID === undefined) !== (c.S3_SECRET_ACCESS_KEY === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['S3_SECRET_ACCESS_KEY'], message: 'S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY are set together or not at all' });
    }
    if (c.BACKOFF_CAP_MS < c.BACKOFF_BASE_MS) {
      ctx.addIssue({ code: 'custom', path: ['BACKOFF_CAP_MS'], message: 'must be at least BACKOFF_BASE_MS' });
    }
    const overlap = c.MODEL_FAST.filter((id) => c.MODEL_PRO.includes(id));
    if (overlap.length > 0) {
      ctx.addIssue({ code: 'custom', path: ['MODEL_PRO'], message: `must not repeat ids of MODEL_FAST (${overlap.join(', ')})` });
    }
    if (c.HOST && !['127.0.0.1', 'localhost', '::1'].includes(c.HOST) && c.API_KEYS.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['HOST'], message: 'may widen the listen address only when API_KEYS is set' });
    }
  });

export type Config = Readonly<z.output<typeof configSchema>>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: { variable: string; message: string }[]) {
    super(
      'Invalid configuration:\n' + problems.map((p) => `  ${p.variable}: ${p.message}`).join('\n'),
    );
  }
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Parse configuration from an environment map (process.env by default). Empty strings count as unset,
 * as they do for most shells' `VAR=` lines. Throws ConfigError naming each bad variable and its rule.
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const known = Object.keys(configSchema.shape ?? {});
  const input: Record<string, string> = {};
  for (const key of known) {
    const v = env[key];
    if (v !== undefined && v !== '') input[key] = v;
  }
  const parsed = configSchema.safeParse(input);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => ({ variable: String(i.path[0] ?? '(config)'), message: i.message })),
    );
  }
  return deepFreeze(parsed.data);
}

/** Build a config for tests and embedded stacks: defaults plus overrides, validated the same way. */
export function configFrom(overrides: Record<string, string | number | boolean | undefined>): Config {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(overrides)) if (v !== undefined) env[k] = String(v);
  return loadConfig(env);
}
