/**
 * Per-test configuration against the shared real servers: a unique QUEUE_PREFIX and S3_KEY_PREFIX so
 * tests never see each other's keys.
 */
import { randomUUID } from 'node:crypto';
import { inject } from 'vitest';
import { configFrom, type Config } from '../../src/config/env.js';
import { S3RVER_CREDENTIALS } from '../../src/dev/s3-server.js';

export function testConfig(overrides: Record<string, string | number | boolean | undefined> = {}): Config {
  const id = randomUUID().slice(0, 8);
  return configFrom({
    NODE_ENV: 'test',
    LOG_LEVEL: 'silent',
    REDIS_URL: inject('redisUrl'),
    QUEUE_PREFIX: `t${id}`,
    S3_ENDPOINT: inject('s3Endpoint'),
    S3_BUCKET: inject('s3Bucket'),
    S3_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
    S3_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    S3_FORCE_PATH_STYLE: true,
    S3_KEY_PREFIX: `t${id}`,
    GEMINI_API_KEY: 'test-key',
    ...overrides,
  });
}

/** Poll until `check` returns a truthy value, or fail with `what` after `timeoutMs`. Never a fixed sleep. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 20): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * The environment a child process (an image or webhook worker started with `node --import tsx
 * workers/...`) needs to join a test's stack; the child parses it like production. `extra` adds or
 * overrides variables.
 */
export function childProcessEnv(config: Config, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/root', NODE_ENV: 'test', LOG_LEVEL: 'silent',
    REDIS_URL: config.REDIS_URL, QUEUE_PREFIX: config.QUEUE_PREFIX,
    S3_ENDPOINT: config.S3_ENDPOINT!, S3_BUCKET: config.S3_BUCKET, S3_ACCESS_KEY_ID: config.S3_ACCESS_KEY_ID!,
    S3_SECRET_ACCESS_KEY: config.S3_SECRET_ACCESS_KEY!, S3_FORCE_PATH_STYLE: 'true', S3_KEY_PREFIX: config.S3_KEY_PREFIX,
    GEMINI_BASE_URL: config.GEMINI_BASE_URL, GEMINI_API_KEY: config.GEMINI_API_KEY!, PEAK_WINDOWS: 'none',
    WORKER_LOCK_DURATION_MS: String(config.WORKER_LOCK_DURATION_MS),
    WORKER_STALLED_INTERVAL_MS: String(config.WORKER_STALLED_INTERVAL_MS),
    ...extra,
  };
}
