/**
 * experiment.completed: queued by the finisher through the webhook outbox, rendered by the webhook
 * worker (at first send, so presigned URLs are fresh) as the same JSON `GET /v1/experiments/:id`
 * answers, compacted to fit the payload limit when an experiment is large.
 *
 * Importing this module registers the renderer (`registerEventRenderer('experiment', ...)`): the
 * webhook worker process must import it.
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { WebhookTarget } from '../jobs/request.js';
import { enqueueWebhookEvent } from '../webhooks/outbox.js';
import { MAX_PAYLOAD_BYTES, registerEventRenderer, type RenderDeps } from '../webhooks/render.js';
import { createExperimentQueue } from './experiment-queue.js';
import { ExperimentReader, type ExperimentView } from './service.js';

export interface ExperimentCompletedEvent {
  type: 'experiment.completed';
  objectId: string;
  tenant: string | null;
  webhook: WebhookTarget;
  /** When the experiment finished (ISO): the payload's timestamp. */
  at?: string;
}

/** Queue the event (idempotent: the outbox derives the delivery id from type and object id). */
export async function enqueueExperimentCompleted(config: Config, redis: Redis, event: ExperimentCompletedEvent): Promise<void> {
  await enqueueWebhookEvent(config, redis, event);
}

/** Room left for `{"type","timestamp","data":…}` around the data. */
const DATA_BUDGET_BYTES = MAX_PAYLOAD_BYTES - 400;
const SHORT_PROMPT = 300;

export type ExperimentWebhookData = ExperimentView & { compacted?: 'runs' | 'summaries' };

/**
 * The view as it is, when it fits; else each run keeps only what a receiver acts on (status, model,
 * latency, cost, error code, output URL) and prompts are shortened; else the runs are left out and
 * the per-variant summaries remain (the receiver GETs the experiment for the rest).
 */
export function experimentWebhookData(view: ExperimentView, budgetBytes = DATA_BUDGET_BYTES): ExperimentWebhookData {
  const fits = (d: unknown) => Buffer.byteLength(JSON.stringify(d)) <= budgetBytes;
  if (fits(view)) return view;
  const short = (s: string) => (s.length > SHORT_PROMPT ? `${s.slice(0, SHORT_PROMPT)}…` : s);
  const slim: ExperimentWebhookData = {
    ...view,
    prompt: short(view.prompt),
    compacted: 'runs',
    variants: view.variants.map((v) => ({
      ...v,
      prompt: short(v.prompt),
      runs: v.runs.map((r) => ({
        jobId: r.jobId, repeat: r.repeat, status: r.status, model: r.model, family: r.family, latencyMs: r.latencyMs,
        costUsd: r.costUsd, attempts: r.attempts,
        ...(r.output ? { output: r.output } : {}),
        ...(r.error ? { error: { code: r.error.code, message: short(r.error.message) } } : {}),
      })),
    })),
  };
  if (fits(slim)) return slim;
  return { ...slim, compacted: 'summaries', variants: slim.variants.map((v) => ({ ...v, runs: [] })) };
}

/** One experiment queue per connection the webhook worker renders with. */
const experimentQueues = new WeakMap<Redis, Queue>();

async function renderExperiment(id: string, deps: RenderDeps): Promise<ExperimentWebhookData | undefined> {
  let experimentQueue = experimentQueues.get(deps.redis);
  if (!experimentQueue) {
    experimentQueue = createExperimentQueue(deps.config, deps.redis);
    experimentQueues.set(deps.redis, experimentQueue);
  }
  const reader = new ExperimentReader({
    config: deps.config, redis: deps.redis, store: deps.store, imageQueue: deps.imageQueue, experimentQueue, now: deps.now,
  });
  // The event was queued for the experiment's owner: read it as the owner.
  const view = await reader.getForOwner(id);
  return view ? experimentWebhookData(view) : undefined;
}

registerEventRenderer('experiment', renderExperiment);
