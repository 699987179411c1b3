/**
 * The HTTP API (fastify): submit image jobs and read them back. It enqueues and reads; it never
 * calls a model.
 *
 * Routes: POST /v1/jobs, GET /v1/jobs/:id, GET /healthz (process up), GET /readyz (Redis and S3
 * reachable), GET /metrics (Prometheus; routes/metrics.ts), and the route modules below. With API_KEYS set, /v1 needs `Authorization: Bearer <key>` and a tenant sees only its
 * own jobs; without keys the server listens on loopback only.
 */
import type { AddressInfo } from 'node:net';
import type { Queue } from 'bullmq';
import { fastify, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';
import { createLogger, type Logger } from '../logging/logger.js';
import { createRedis } from '../queue/connection.js';
import { createImageQueue } from '../queue/image-queue.js';
import { ImageJobProducer, redisReady } from '../queue/producer.js';
import { createS3Store, type ObjectStore } from '../storage/object-store.js';
import { createAuthenticator } from './auth.js';
import type { RouteContext, RouteModule } from './context.js';
import { batchesRoutes } from './routes/batches.js';
import { experimentsRoutes } from './routes/experiments.js';
import { liveRoutes } from './routes/live.js';
import { healthRoutes } from './routes/health.js';
import { webhooksRoutes } from './routes/webhooks.js';
import { lanesRoutes } from './routes/lanes.js';
import { spendRoutes } from './routes/spend.js';
import { metricsRoutes } from './routes/metrics.js';

/** Route modules beyond the job routes below, in registration order. */
const ROUTE_MODULES: readonly RouteModule[] = [webhooksRoutes, batchesRoutes, experimentsRoutes, liveRoutes, spendRoutes, healthRoutes, lanesRoutes, metricsRoutes];
import { RETRY_AFTER_SECONDS, toApiError } from './errors.js';

export interface ApiDeps {
  config: Config;
  producer: ImageJobProducer;
  queue: Queue;
  redis: Redis;
  store: ObjectStore;
  logger?: Logger;
}

export interface RunningApi {
  /** Base URL, e.g. http://127.0.0.1:8080 */
  url: string;
  app: FastifyInstance;
  /** Stop listening, then release what startApiServer created (never injected dependencies). */
  close(): Promise<void>;
}

const LOOPBACK_HOSTS = ['127.0.0.1', 'localhost', '::1'];
/** How long a readiness check may take before it counts as failed. */
const READY_CHECK_TIMEOUT_MS = 3_000;

export async function buildApiServer(deps: ApiDeps): Promise<FastifyInstance> {
  const { config, producer } = deps;
  const baseLogger = deps.logger ?? createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-api' });
  // Request lines carry method, path and peer only: never bodies (prompts, base64 images) or headers.
  const logger = baseLogger.child({ component: 'api' }, {
    serializers: {
      req: (req: { method?: string; url?: string; ip?: string }) => ({
        method: req.method,
        path: (req.url ?? '').split('?')[0],
        remoteAddress: req.ip,
      }),
    },
  });

  const app = fastify({
    loggerInstance: logger,
    bodyLimit: config.API_BODY_LIMIT_BYTES,
    return503OnClosing: true,
  }) as unknown as FastifyInstance;

  // Only JSON bodies: a text/plain body would otherwise reach the schema as a string.
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((err, request, reply) => {
    const apiError = toApiError(err, config.API_BODY_LIMIT_BYTES);
    if (apiError.status >= 500) {
      request.log.error({ err: apiError.error, code: apiError.error.code }, 'request failed');
    } else {
      request.log.info({ code: apiError.error.code }, 'request rejected');
    }
    void reply.code(apiError.status).headers(apiError.headers).send(apiError.body);
  });

  app.setNotFoundHandler((request, reply) => {
    const err = new PixelmillError('NOT_FOUND', `No route ${request.method} ${request.url.split('?')[0]}`);
    const apiError = toApiError(err, config.API_BODY_LIMIT_BYTES);
    void reply.code(404).send(apiError.body);
  });

  const keysConfigured = config.API_KEYS.length > 0;
  const authenticate = createAuthenticator(config.API_KEYS);
  const tenants = new WeakMap<FastifyRequest, string | null>();
  const tenantOf = (request: FastifyRequest): string | null => tenants.get(request) ?? null;
  const closers: (() => Promise<void>)[] = [];
  app.addHook('onClose', async () => {
    for (const close of closers.splice(0)) await close().catch(() => {});
  });
  const ctx: RouteContext = {
    config, producer, queue: deps.queue, redis: deps.redis, store: deps.store, logger, tenantOf,
    onClose: (fn) => void closers.push(fn),
  };

  await app.register(
    async (v1) => {
      // onRequest runs before the body is read: an unauthenticated client cannot make us parse 100 MB.
      v1.addHook('onRequest', async (request) => {
        if (!keysConfigured) {
          tenants.set(request, null);
          return;
        }
        const who = authenticate(request.headers.authorization);
        if (!who) throw new PixelmillError('UNAUTHORIZED', 'Missing or unknown API key');
        tenants.set(request, who.tenant);
      });

      v1.post('/jobs', async (request, reply) => {
        const { job, created } = await producer.submit(request.body, tenantOf(request));
        request.log.info({ jobId: job.id, created, tier: job.request.tier, priority: job.request.priority }, created ? 'job queued' : 'job replayed');
        // 202: accepted and queued; 200: an earlier request with this idempotencyKey made the job.
        void reply.code(created ? 202 : 200).header('location', `/v1/jobs/${encodeURIComponent(job.id)}`);
        return job;
      });

      v1.get<{ Params: { id: string } }>('/jobs/:id', async (request) => {
        const view = await producer.get(request.params.id, tenantOf(request));
        // Another tenant's job answers exactly like a missing one: ids reveal nothing.
        if (!view) throw new PixelmillError('NOT_FOUND', `No job ${request.params.id}`);
        return view;
      });

      for (const module of ROUTE_MODULES) await module.v1?.(v1, ctx);
    },
    { prefix: '/v1' },
  );
  for (const module of ROUTE_MODULES) await module.root?.(app, ctx);

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply: FastifyReply) => {
    const [redis, s3] = await Promise.all([
      check(async () => {
        await redisReady(deps.redis, READY_CHECK_TIMEOUT_MS);
        const pong = await deps.redis.ping();
        if (pong !== 'PONG') throw new Error(`PING answered ${pong}`);
      }),
      check(() => deps.store.ping()),
    ]);
    const checks = { redis, s3 };
    if (redis === 'ok' && s3 === 'ok') return { status: 'ready', checks };
    const code = redis !== 'ok' ? 'QUEUE_UNAVAILABLE' : 'STORAGE_UNAVAILABLE';
    const failed = [redis !== 'ok' ? `redis: ${redis}` : '', s3 !== 'ok' ? `s3: ${s3}` : ''].filter(Boolean).join('; ');
    const apiError = toApiError(new PixelmillError(code, `Not ready (${failed})`), config.API_BODY_LIMIT_BYTES);
    void reply.code(503).header('retry-after', String(RETRY_AFTER_SECONDS));
    return { status: 'unavailable', checks, ...apiError.body };
  });

  return app;
}

/** 'ok', or why the check failed. */
async function check(probe: () => Promise<void>): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      probe(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${READY_CHECK_TIMEOUT_MS} ms`)), READY_CHECK_TIMEOUT_MS);
      }),
    ]);
    return 'ok';
  } catch (err) {
    const e = err as { name?: string; message?: string };
    return `failed: ${[e.name, e.message].filter(Boolean).join(' ') || String(err)}`;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Start the API on config.PORT. Whatever `deps` does not provide is created here (producer Redis
 * connection, queue, S3 store, producer, logger) and released by close().
 */
export async function startApiServer(config: Config, deps: Partial<ApiDeps> = {}): Promise<RunningApi> {
  const logger = deps.logger ?? createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-api' });
  const cleanups: (() => Promise<void> | void)[] = [];

  const redis = deps.redis ?? createRedis(config, 'producer');
  if (!deps.redis) cleanups.push(() => redis.disconnect());
  const queue = deps.queue ?? createImageQueue(config, redis);
  if (!deps.queue) {
    queue.on('error', (err) => logger.warn({ err }, 'queue connection error'));
    cleanups.push(() => queue.close());
  }
  const store = deps.store ?? createS3Store(config);
  if (!deps.store) cleanups.push(() => store.destroy());
  const producer = deps.producer ?? new ImageJobProducer({ config, queue, redis, store });

  const release = async () => {
    // Reverse order: the queue before the connection it uses.
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch (err) {
        logger.warn({ err }, 'error while releasing an API dependency');
      }
    }
  };

  const app = await buildApiServer({ config, producer, queue, redis, store, logger });

  let host: string;
  if (config.API_KEYS.length > 0) {
    host = config.HOST ?? '0.0.0.0';
  } else {
    host = config.HOST && LOOPBACK_HOSTS.includes(config.HOST) ? config.HOST : '127.0.0.1';
    logger.warn({ host }, 'API_KEYS is not set: the API has no authentication and listens on loopback only');
  }

  try {
    await app.listen({ port: config.PORT, host });
  } catch (err) {
    await app.close().catch(() => {});
    await release();
    throw err;
  }
  const address = app.server.address() as AddressInfo;
  const urlHost = address.address === '0.0.0.0' || address.address === '::' ? '127.0.0.1' : address.address;
  const url = `http://${urlHost.includes(':') ? `[${urlHost}]` : urlHost}:${address.port}`;
  logger.info({ listen: url, auth: config.API_KEYS.length > 0 }, 'API listening');

  let closing: Promise<void> | undefined;
  return {
    url,
    app,
    close() {
      closing ??= (async () => {
        await app.close();
        await release();
      })();
      return closing;
    },
  };
}
