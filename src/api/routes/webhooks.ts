/**
 * Webhook delivery routes (tenant-scoped: a tenant sees and replays only its own deliveries):
 *
 *   GET  /v1/webhooks/deliveries?status=&cursor=&limit=   newest first; status pending | delivered |
 *                                                        failed (dead letters) | disabled | skipped
 *   GET  /v1/jobs/:id/deliveries                          the deliveries about one job (404 like GET /v1/jobs/:id)
 *   POST /v1/webhooks/deliveries/:id/replay               send the event again, same webhook-id, body
 *                                                        rendered afresh (new presigned URLs). Works for
 *                                                        delivered, failed, disabled and skipped
 *                                                        deliveries; replaying re-enables the delivery's
 *                                                        endpoint if a 410 disabled it (the caller says
 *                                                        it is back). A pending delivery is
 *                                                        left as is (202, it is already being sent).
 */
import type { Queue } from 'bullmq';
import { z } from 'zod';
import { PixelmillError } from '../../errors/catalogue.js';
import { zodIssues } from '../../jobs/request.js';
import { DELIVERY_STATUSES, DeliveryStore, InvalidCursorError, publicView } from '../../webhooks/deliveries.js';
import { WEBHOOK_JOB_NAME, createWebhookQueue, deliveryJobOptions, type DeliveryJobData } from '../../webhooks/queue.js';
import type { RouteModule } from '../context.js';

const listQuerySchema = z
  .object({
    status: z.enum(DELIVERY_STATUSES).optional(),
    cursor: z.string().min(1).max(500).optional(),
    limit: z.coerce.number().int().min(1).max(100).default(20),
  })
  .strict();

const DELIVERY_ID = /^evt_[A-Za-z0-9_-]{1,64}$/;

function invalidQuery(issues: { path: string; message: string }[]): PixelmillError {
  return new PixelmillError('INVALID_REQUEST', `Invalid query (${issues.map((i) => `${i.path}: ${i.message}`).join('; ')})`, { details: { issues } });
}

export const webhooksRoutes: RouteModule = {
  async v1(v1, ctx) {
    const deliveries = new DeliveryStore(ctx.redis, ctx.config);
    let queue: Queue | undefined;
    const webhookQueue = () => {
      if (!queue) {
        queue = createWebhookQueue(ctx.config, ctx.redis);
        queue.on('error', (err) => ctx.logger.warn({ err }, 'webhook queue connection error'));
        const q = queue;
        ctx.onClose(() => q.close());
      }
      return queue;
    };

    v1.get('/webhooks/deliveries', async (request) => {
      const parsed = listQuerySchema.safeParse(request.query);
      if (!parsed.success) throw invalidQuery(zodIssues(parsed.error));
      const { status, cursor, limit } = parsed.data;
      try {
        return await deliveries.list(ctx.tenantOf(request), status, cursor, limit);
      } catch (err) {
        if (err instanceof InvalidCursorError) throw invalidQuery([{ path: 'cursor', message: err.message }]);
        throw err;
      }
    });

    v1.get<{ Params: { id: string } }>('/jobs/:id/deliveries', async (request) => {
      const tenant = ctx.tenantOf(request);
      const job = await ctx.producer.get(request.params.id, tenant);
      if (!job) throw new PixelmillError('NOT_FOUND', `No job ${request.params.id}`);
      const records = await deliveries.forObject(job.id);
      return { deliveries: records.filter((r) => r.tenant === tenant).map(publicView) };
    });

    v1.post<{ Params: { id: string } }>('/webhooks/deliveries/:id/replay', async (request, reply) => {
      const tenant = ctx.tenantOf(request);
      const { id } = request.params;
      const found = DELIVERY_ID.test(id) ? await deliveries.get(id) : undefined;
      // Another tenant's delivery answers exactly like a missing one.
      if (!found || found.tenant !== tenant) throw new PixelmillError('NOT_FOUND', `No webhook delivery ${id}`);

      const replay = await deliveries.beginReplay(found);
      if (!replay) throw new PixelmillError('NOT_FOUND', `No webhook delivery ${id}`);
      // An explicit replay says the endpoint is back: lift a 410 disablement of its URL.
      if (replay.started) await deliveries.enableEndpoint(found.url);
      // Also when already pending: (re)adding the current generation's job is idempotent, and heals a
      // replay whose job was never added (the API failed between the two steps).
      const data: DeliveryJobData = {
        v: 1, deliveryId: found.id, generation: replay.generation, type: found.type, objectId: found.objectId, tenant: found.tenant,
        url: found.url, eventAt: found.eventAt,
      };
      await webhookQueue().add(WEBHOOK_JOB_NAME, data, deliveryJobOptions(ctx.config, found.id, replay.generation));
      request.log.info({ deliveryId: found.id, generation: replay.generation, started: replay.started }, 'webhook replay');
      const now = await deliveries.get(found.id);
      void reply.code(202);
      return now ? publicView(now) : publicView(found);
    });
  },
};
