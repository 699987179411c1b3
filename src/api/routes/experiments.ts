/**
 * A/B experiments (issue 3, part E):
 *
 *   POST /v1/experiments              create: a BullMQ flow, one run per variant × repeat → 202 + view
 *   GET  /v1/experiments/:id          the variants side by side (tenant-scoped)
 *   POST /v1/experiments/:id/winner   record the chosen variant {"variant"} → 200 + view
 *   GET  /experiments/:id             the web page (public shell; its script calls the routes above)
 */
import { FlowProducer } from 'bullmq';
import { PixelmillError } from '../../errors/catalogue.js';
import { EXPERIMENT_ID_PATTERN, createExperimentQueue } from '../../experiments/experiment-queue.js';
import { EXPERIMENT_PAGE_HEADERS, EXPERIMENT_PAGE_HTML } from '../../experiments/page/experiment-page.js';
import { ExperimentService } from '../../experiments/service.js';
import type { RouteModule } from '../context.js';

export const experimentsRoutes: RouteModule = {
  async v1(v1, ctx) {
    const { config, redis, store, logger } = ctx;
    const experimentQueue = createExperimentQueue(config, redis);
    experimentQueue.on('error', (err) => logger.warn({ err: err.message }, 'experiment queue connection error'));
    const flowProducer = new FlowProducer({ connection: redis, prefix: config.QUEUE_PREFIX });
    flowProducer.on('error', (err) => logger.warn({ err: err.message }, 'flow producer connection error'));
    ctx.onClose(async () => {
      await flowProducer.close();
      await experimentQueue.close();
    });
    const experiments = new ExperimentService({ config, redis, store, imageQueue: ctx.queue, experimentQueue, flowProducer });

    v1.post('/experiments', async (request, reply) => {
      const view = await experiments.create(request.body, ctx.tenantOf(request));
      request.log.info({ experimentId: view.id, variants: view.variants.length, repeats: view.repeats }, 'experiment queued');
      void reply.code(202).header('location', `/v1/experiments/${encodeURIComponent(view.id)}`);
      return view;
    });

    v1.get<{ Params: { id: string } }>('/experiments/:id', async (request) => {
      const view = await experiments.get(request.params.id, ctx.tenantOf(request));
      // Another tenant's experiment answers exactly like a missing one.
      if (!view) throw new PixelmillError('NOT_FOUND', `No experiment ${request.params.id}`);
      return view;
    });

    v1.post<{ Params: { id: string } }>('/experiments/:id/winner', async (request) => {
      const view = await experiments.chooseWinner(request.params.id, ctx.tenantOf(request), request.body);
      request.log.info({ experimentId: view.id, winner: view.winner?.variant }, 'experiment winner recorded');
      return view;
    });
  },

  async root(app) {
    app.get<{ Params: { id: string } }>('/experiments/:id', async (request, reply) => {
      if (!EXPERIMENT_ID_PATTERN.test(request.params.id)) {
        throw new PixelmillError('NOT_FOUND', `No experiment ${request.params.id}`);
      }
      void reply.code(200).headers(EXPERIMENT_PAGE_HEADERS);
      return EXPERIMENT_PAGE_HTML;
    });
  },
};
