/**
 * Starts the real components every test shares: one redis-server on a free port and one s3rver with
 * its data in a temp dir. Tests isolate themselves with a unique queue prefix and key prefix each
 * (see test/support/stack.ts), so they can run in parallel against the same servers.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { startRedisServer } from '../../src/dev/redis-server.js';
import { startS3Server } from '../../src/dev/s3-server.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
    s3Endpoint: string;
    s3Bucket: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const redis = await startRedisServer();
  const dir = mkdtempSync(join(tmpdir(), 'pixelmill-s3-'));
  const s3 = await startS3Server({ directory: dir, buckets: ['pixelmill-test'] });
  project.provide('redisUrl', redis.url);
  project.provide('s3Endpoint', s3.endpoint);
  project.provide('s3Bucket', 'pixelmill-test');
  return async () => {
    await s3.stop();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  };
}
