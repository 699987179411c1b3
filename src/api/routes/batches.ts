/**
 * Batches: asynchronous bulk generation.
 *
 *   POST   /v1/batches            JSON {jobs, defaults?, webhook?, metadata?, skipInvalid?, maxCostUsd?}
 *                                 (≤ 10,000 jobs) or Content-Type application/x-ndjson, one job per
 *                                 line (≤ 100,000), optional first line {"batch": {...options}},
 *                                 ?skipInvalid=true; see src/batches/create.ts. 202 + the batch view
 *                                 (+ `rejected` when skipInvalid left jobs out).
 *   GET    /v1/batches/:id        the batch view (src/batches/view.ts)
 *   GET    /v1/batches/:id/jobs   ?status=&cursor=&limit= (≤ 1000, default 100): {data, nextCursor}
 *   DELETE /v1/batches/:id        cancels what has not ended: 200 (all cancelled) or 202 (running jobs
 *                                 are being aborted), with the view and {canceled, canceling}
 *
 * Another tenant's batch answers 404 like a missing one.
 */
import type { Readable } from 'node:stream';
import type { FastifyRequest } from 'fastify';
import { z } from 'zod';
import { PixelmillError, isPixelmillError } from '../../errors/catalogue.js';
import { zodIssues } from '../../jobs/request.js';
import type { JobStatus } from '../../queue/job-view.js';
import { redisReady } from '../../queue/producer.js';
import { queueBatchCompleted } from '../../batches/accounting.js';
import { cancelBatch } from '../../batches/cancel.js';
import { checkBatchInputs, planFromJson, planFromNdjson, rejectInvalidJobs, rejectedReport, storeBatch } from '../../batches/create.js';
import { readBatchRecord, type BatchRecord } from '../../batches/record.js';
import { batchView, listBatchJobs } from '../../batches/view.js';
import '../../batches/render.js';
import type { RouteContext, RouteModule } from '../context.js';

export const NDJSON_CONTENT_TYPE = 'application/x-ndjson';
/** How long a request waits for the producer connection's first connect. */
const REDIS_READY_TIMEOUT_MS = 5_000;

const JOB_STATUSES = ['queued', 'running', 'retrying', 'succeeded', 'failed', 'canceled'] as const satisfies readonly JobStatus[];

const flag = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

const createQuerySchema = z.object({ skipInvalid: flag.optional() }).strict();

const jobsQuerySchema = z
  .object({
    status: z.enum(JOB_STATUSES).optional(),
    cursor: z.string().regex(/^\d{1,10}$/, { message: 'must be a cursor returned as nextCursor' }).optional(),
    limit: z.coerce.number().int().min(1).max(1000).default(100),
  })
  .strict();

function parseQuery<T extends z.ZodType>(schema: T, query: unknown): z.output<T> {
  const parsed = schema.safeParse(query ?? {});
  if (!parsed.success) {
    const issues = zodIssues(parsed.error).map((i) => ({ path: `query.${i.path}`, message: i.message }));
    throw new PixelmillError('INVALID_REQUEST', `Invalid query (${issues.map((i) => `${i.path}: ${i.message}`).join('; ')})`, { details: { issues } });
  }
  return parsed.data;
}

function isNdjson(request: FastifyRequest): boolean {
  return (request.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase() === NDJSON_CONTENT_TYPE;
}

/**
 * Run Redis work once the producer connection is ready (it fails fast rather than queueing); a Redis
 * failure answers 503 QUEUE_UNAVAILABLE. No overall time limit: cancelling 100,000 jobs takes a while.
 */
async function withRedis<T>(ctx: RouteContext, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    await redisReady(ctx.redis, REDIS_READY_TIMEOUT_MS);
    return await fn();
  } catch (err) {
    if (isPixelmillError(err)) throw err;
    throw new PixelmillError('QUEUE_UNAVAILABLE', `Redis did not complete ${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

async function loadOwned(ctx: RouteContext, request: FastifyRequest<{ Params: { id: string } }>): Promise<BatchRecord> {
  const record = await withRedis(ctx, `reading batch ${request.params.id}`, () => readBatchRecord(ctx.config, ctx.redis, request.params.id));
  if (!record || record.info.tenant !== ctx.tenantOf(request)) throw new PixelmillError('NOT_FOUND', `No batch ${request.params.id}`);
  return record;
}

export const batchesRoutes: RouteModule = {
  async v1(v1, ctx) {
    const { config, redis, queue, store } = ctx;

    // Encapsulated, so only this route gets the streaming NDJSON body.
    await v1.register(async (scope) => {
      scope.addContentTypeParser(NDJSON_CONTENT_TYPE, (_request, payload, done) => done(null, payload));

      scope.post('/batches', async (request, reply) => {
        const tenant = ctx.tenantOf(request);
        const query = parseQuery(createQuerySchema, request.query);
        const deps = { config, store };
        const plan = isNdjson(request)
          ? await planFromNdjson(request.body as Readable, query.skipInvalid === undefined ? {} : { skipInvalid: query.skipInvalid }, deps)
          : planFromJson(query.skipInvalid === undefined ? request.body : withSkipInvalid(request.body, query.skipInvalid), deps);
        if (plan.rejected.length === 0 || plan.options.skipInvalid) await checkBatchInputs(plan, tenant, deps);
        rejectInvalidJobs(plan);
        const { batchId } = await storeBatch(plan, tenant, { config, queue, redis, store });
        const view = await withRedis(ctx, `reading batch ${batchId}`, async () => {
          const record = await readBatchRecord(config, redis, batchId);
          if (!record) throw new PixelmillError('INTERNAL', `batch ${batchId} was stored but cannot be read back`);
          return batchView(record, { config, redis });
        });
        const report = rejectedReport(plan);
        request.log.info({ batchId, jobs: view.total, rejected: report?.count ?? 0 }, 'batch queued');
        void reply.code(202).header('location', `/v1/batches/${batchId}`);
        return { ...view, ...(report ? { rejected: report } : {}) };
      });
    });

    v1.get<{ Params: { id: string } }>('/batches/:id', async (request) => {
      const record = await loadOwned(ctx, request);
      // Repairs a batch.completed lost to a crash between the last job's count and its queueing.
      if (record.finishedAt !== null && record.webhook && record.webhookQueuedAt === null) {
        await queueBatchCompleted(config, redis, record.id).catch((err: unknown) => request.log.warn({ err }, 'could not queue batch.completed'));
      }
      return withRedis(ctx, `reading batch ${record.id}`, () => batchView(record, { config, redis }));
    });

    v1.get<{ Params: { id: string } }>('/batches/:id/jobs', async (request) => {
      const query = parseQuery(jobsQuerySchema, request.query);
      const record = await loadOwned(ctx, request);
      return withRedis(ctx, `listing the jobs of batch ${record.id}`, () => listBatchJobs(record, {
        limit: query.limit, ...(query.status ? { status: query.status } : {}), ...(query.cursor !== undefined ? { cursor: query.cursor } : {}),
      }, { config, redis, queue, store }));
    });

    v1.delete<{ Params: { id: string } }>('/batches/:id', async (request, reply) => {
      const record = await loadOwned(ctx, request);
      const { result, view } = await withRedis(ctx, `cancelling batch ${record.id}`, async () => {
        const result = await cancelBatch(record, { config, redis, queue });
        const after = (await readBatchRecord(config, redis, record.id)) ?? record;
        return { result, view: await batchView(after, { config, redis }) };
      });
      request.log.info({ batchId: record.id, ...result }, 'batch cancelled');
      void reply.code(result.canceling > 0 ? 202 : 200);
      return { ...view, ...result };
    });
  },
};

/** `?skipInvalid=` on a JSON body: the body's own field wins when both are given. */
function withSkipInvalid(body: unknown, skipInvalid: boolean): unknown {
  if (typeof body !== 'object' || body === null || Array.isArray(body) || 'skipInvalid' in body) return body;
  return { ...body, skipInvalid };
}
