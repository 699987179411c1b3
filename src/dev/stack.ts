/**
 * The embedded default stack (`pixelmill dev`, `pixelmill demo`): everything on one machine with no
 * cloud account and no Docker.
 *
 * - REDIS_URL unset     → a private redis-server on a free port, data in a temp dir
 * - S3_ENDPOINT unset   → s3rver (a real S3-protocol server) with data under ./.pixelmill/s3
 * - GEMINI_API_KEY unset → the Gemini simulator, and the workers pointed at it (images are simulated)
 *
 * then the HTTP API and one image worker in this process. `close()` stops everything in reverse order.
 */
import { resolve } from 'node:path';
import { loadConfig, type Config } from '../config/env.js';
import { startApiServer, type RunningApi } from '../api/server.js';
import { createLogger, type Logger } from '../logging/logger.js';
import { startSimulator, type RunningSimulator } from '../simulator/server.js';
import { createS3Store } from '../storage/object-store.js';
import { startImageWorker, type RunningImageWorker } from '../worker/image-worker.js';
import { startWebhookWorker } from '../webhooks/worker.js';
import { startRedisServer, type EmbeddedRedis } from './redis-server.js';
import { S3RVER_CREDENTIALS, startS3Server, type EmbeddedS3 } from './s3-server.js';

export interface EmbeddedStackOptions {
  /** The environment to read configuration from (process.env in the CLI). */
  env: Record<string, string | undefined>;
  /** Where s3rver keeps objects. */
  dataDir?: string;
  /** Simulator latency multiplier (1 = the seeds' real latencies). */
  simulatorTimeScale?: number;
  /** Overrides applied after the embedded services are known (e.g. PORT=0 for the demo). */
  overrides?: Record<string, string>;
  /** Human-readable progress lines (the CLI prints them). */
  say?: (line: string) => void;
}

export interface EmbeddedStack {
  readonly config: Config;
  readonly apiUrl: string;
  readonly simulated: boolean;
  readonly s3Directory: string | undefined;
  readonly logger: Logger;
  close(): Promise<void>;
}

export async function startEmbeddedStack(opts: EmbeddedStackOptions): Promise<EmbeddedStack> {
  const say = opts.say ?? (() => {});
  const env = { ...opts.env };
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {});
  };

  try {
    let redis: EmbeddedRedis | undefined;
    if (!env['REDIS_URL']) {
      redis = await startRedisServer({ log: say });
      stops.push(() => redis!.stop());
      env['REDIS_URL'] = redis.url;
      say(`redis      embedded redis-server at ${redis.url} (data in a temp dir, gone on exit)`);
    } else {
      say(`redis      ${env['REDIS_URL']}`);
    }

    let s3: EmbeddedS3 | undefined;
    if (!env['S3_ENDPOINT']) {
      const directory = resolve(opts.dataDir ?? '.pixelmill', 's3');
      s3 = await startS3Server({ directory, buckets: [env['S3_BUCKET'] || 'pixelmill'] });
      stops.push(() => s3!.stop());
      env['S3_ENDPOINT'] = s3.endpoint;
      env['S3_ACCESS_KEY_ID'] = S3RVER_CREDENTIALS.accessKeyId;
      env['S3_SECRET_ACCESS_KEY'] = S3RVER_CREDENTIALS.secretAccessKey;
      env['S3_FORCE_PATH_STYLE'] = 'true';
      say(`storage    embedded S3 server (s3rver) at ${s3.endpoint}, objects under ${directory}`);
    } else {
      say(`storage    ${env['S3_ENDPOINT']}`);
    }

    let simulator: RunningSimulator | undefined;
    if (!env['GEMINI_API_KEY']) {
      simulator = await startSimulator({ timeScale: opts.simulatorTimeScale ?? 1, peak: 'auto' });
      stops.push(() => simulator!.close());
      env['GEMINI_API_KEY'] = 'simulated-key';
      env['GEMINI_BASE_URL'] = simulator.url;
      say(`models     GEMINI_API_KEY is not set: using the built-in Gemini SIMULATOR at ${simulator.url}`);
      say('           (images are simulated test patterns, not real generations; set GEMINI_API_KEY for real ones)');
    } else {
      say(`models     Gemini API at ${env['GEMINI_BASE_URL'] || 'https://generativelanguage.googleapis.com'}`);
    }

    const config = loadConfig({ ...env, ...opts.overrides });
    const logger = createLogger({ level: config.LOG_LEVEL, name: 'pixelmill' });
    if (s3) {
      const store = createS3Store(config);
      await store.ensureBucket();
      store.destroy();
    }

    const api: RunningApi = await startApiServer(config, { logger });
    stops.push(() => api.close());
    const worker: RunningImageWorker = startImageWorker(config, { logger });
    // A dev stack stops at once: in-flight simulated jobs are released, not waited for.
    stops.push(() => worker.close(1_000));
    const webhookWorker = startWebhookWorker(config, { logger });
    stops.push(() => webhookWorker.close(true));
    say(`api        ${api.url}   (try: curl -s ${api.url}/healthz)`);
    say(`worker     concurrency ${worker.concurrency}`);

    return {
      config, apiUrl: api.url, simulated: simulator !== undefined, s3Directory: s3?.directory, logger,
      close: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
