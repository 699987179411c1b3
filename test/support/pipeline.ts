/**
 * A whole pixelmill against real components: the simulator (real HTTP), the API (real fastify on a
 * free port), an image worker, the shared redis-server and s3rver. Each pipeline has its own queue
 * prefix and key prefix.
 */
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterEach } from 'vitest';
import type { Config } from '../../src/config/env.js';
import { startApiServer, type RunningApi } from '../../src/api/server.js';
import { silentLogger } from '../../src/logging/logger.js';
import { IMAGE_QUEUE } from '../../src/queue/image-queue.js';
import { startSimulator, type RunningSimulator, type SimulatorOptions } from '../../src/simulator/server.js';
import { createS3Store, s3ClientConfig, type ObjectStore } from '../../src/storage/object-store.js';
import { startImageWorker, type RunningImageWorker } from '../../src/worker/image-worker.js';
import { testConfig, waitFor } from './stack.js';

export interface Pipeline {
  config: Config;
  sim: RunningSimulator;
  api: RunningApi;
  worker: RunningImageWorker | undefined;
  store: ObjectStore;
  redis: Redis;
  queue: Queue;
  submit(body: Record<string, unknown>): Promise<{ status: number; body: Record<string, any> }>;
  get(id: string): Promise<Record<string, any>>;
  /** Wait until the job is succeeded or failed, and return its view. */
  settle(id: string, timeoutMs?: number): Promise<Record<string, any>>;
  close(): Promise<void>;
}

export async function startPipeline(opts: {
  env?: Record<string, string | number | boolean | undefined>;
  sim?: Partial<SimulatorOptions>;
  /** false: start no worker (the test starts its own). */
  worker?: boolean;
} = {}): Promise<Pipeline> {
  const sim = await startSimulator({ timeScale: 0, seed: 7, peak: 'off', ...opts.sim });
  const config = testConfig({
    GEMINI_BASE_URL: sim.url, PORT: 0, WORKER_CONCURRENCY: 8, BACKOFF_BASE_MS: 20, BACKOFF_CAP_MS: 200,
    PEAK_WINDOWS: 'none', ...opts.env,
  });
  const logger = silentLogger();
  const api = await startApiServer(config, { logger });
  const worker = opts.worker === false ? undefined : startImageWorker(config, { logger });
  const store = createS3Store(config);
  const redis = new Redis(config.REDIS_URL);
  const queue = new Queue(IMAGE_QUEUE, { connection: redis, prefix: config.QUEUE_PREFIX });

  const get = async (id: string) => {
    const res = await request(`${api.url}/v1/jobs/${id}`);
    return (await res.body.json()) as Record<string, any>;
  };
  return {
    config, sim, api, worker, store, redis, queue, get,
    async submit(body) {
      const res = await request(`${api.url}/v1/jobs`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
      });
      return { status: res.statusCode, body: (await res.body.json()) as Record<string, any> };
    },
    settle(id, timeoutMs = 30_000) {
      return waitFor(`job ${id} to finish`, async () => {
        const view = await get(id);
        return view['status'] === 'succeeded' || view['status'] === 'failed' ? view : undefined;
      }, timeoutMs);
    },
    async close() {
      await worker?.close(1_000);
      await api.close();
      await queue.close();
      await redis.quit();
      store.destroy();
      await sim.close();
    },
  };
}

/** The keys stored under a job's output prefix (a retry must overwrite, so there is at most one). */
export async function outputObjects(config: Config, jobId: string): Promise<string[]> {
  const s3 = new S3Client(s3ClientConfig(config));
  try {
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: config.S3_BUCKET, Prefix: `${config.S3_KEY_PREFIX}/${jobId}` }));
    return (listed.Contents ?? []).map((o) => o.Key!);
  } finally {
    s3.destroy();
  }
}

/**
 * startPipeline for a test file: every pipeline started through the returned function is closed after
 * its test, newest first. Call it once at the top of the file.
 */
export function pipelinesClosedAfterEach(): (opts?: Parameters<typeof startPipeline>[0]) => Promise<Pipeline> {
  const started: Pipeline[] = [];
  afterEach(async () => {
    for (const p of started.splice(0).reverse()) await p.close();
  });
  return async (opts = {}) => {
    const p = await startPipeline(opts);
    started.push(p);
    return p;
  };
}
