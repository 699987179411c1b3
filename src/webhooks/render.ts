/**
 * What a webhook says: `{"type", "timestamp", "data"}` where data is the JSON a GET of the object
 * answers (presigned URLs, never image bytes), rendered by the delivery worker when it first sends
 * the event, so the URLs are fresh when the receiver gets them.
 *
 * - image.* events render the job view (queue/job-view.ts), exactly what GET /v1/jobs/:id answers.
 * - batch.* and experiment.* events render through a function their module registers here
 *   (`registerEventRenderer`), so this module does not depend on theirs. The module that registers
 *   must be imported by the process that runs the webhook worker.
 *
 * Bodies stay under MAX_PAYLOAD_BYTES: an oversized job view loses its oldest history entries, then
 * its prompt is shortened; anything still too large becomes a thin `{id, truncated: true}` payload
 * (the receiver GETs the object).
 */
import { Job, type Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { WebhookEvent } from '../jobs/request.js';
import { TERMINAL_STATUSES, viewJob, type JobStatus, type JobView } from '../queue/job-view.js';
import type { ObjectStore } from '../storage/object-store.js';

/** Standard Webhooks recommends payloads under ~20 KB; we keep a margin below 20 KiB. */
export const MAX_PAYLOAD_BYTES = 20_000;

export type RenderedObjectKind = 'batch' | 'experiment';

export interface RenderDeps {
  config: Config;
  /** A command connection (not a blocking one). */
  redis: Redis;
  store: ObjectStore;
  /** The image queue, to load jobs. */
  imageQueue: Queue;
  now: () => number;
}

/**
 * Render the object as its GET answers it. Return undefined when it no longer exists (the delivery is
 * then recorded as failed); throw to retry later.
 */
export type EventRenderer = (id: string, deps: RenderDeps) => Promise<unknown>;

const renderers = new Map<RenderedObjectKind, EventRenderer>();

/** Called by the batches and experiments modules at load time. */
export function registerEventRenderer(prefix: RenderedObjectKind, fn: EventRenderer): void {
  renderers.set(prefix, fn);
}

export function eventRendererFor(prefix: RenderedObjectKind): EventRenderer | undefined {
  return renderers.get(prefix);
}

export type RenderOutcome =
  | { kind: 'ready'; data: unknown }
  /** The job has not reached its final state yet (the hook runs just before it is recorded). */
  | { kind: 'wait'; status: JobStatus }
  | { kind: 'gone' }
  /** The job ended otherwise than the event says (an attempt queued the event, died, and a later one ended differently). */
  | { kind: 'mismatch'; status: JobStatus };

const EXPECTED_STATUS: Partial<Record<WebhookEvent, JobStatus>> = { 'image.succeeded': 'succeeded', 'image.failed': 'failed' };

export async function renderEventData(type: WebhookEvent, objectId: string, deps: RenderDeps): Promise<RenderOutcome> {
  const expected = EXPECTED_STATUS[type];
  if (expected) {
    const state = await deps.imageQueue.getJobState(objectId);
    if (state === 'unknown') return { kind: 'gone' };
    const job = await Job.fromId(deps.imageQueue, objectId);
    if (!job) return { kind: 'gone' };
    const view = await viewJob(job, { config: deps.config, store: deps.store, now: deps.now, state });
    if (!TERMINAL_STATUSES.includes(view.status)) return { kind: 'wait', status: view.status };
    if (view.status !== expected) return { kind: 'mismatch', status: view.status };
    return { kind: 'ready', data: view };
  }
  const prefix = type.split('.')[0] as RenderedObjectKind;
  const render = renderers.get(prefix);
  if (!render) {
    throw new Error(`no renderer registered for ${prefix} events: the webhook worker process must import the ${prefix} module`);
  }
  const data = await render(objectId, deps);
  return data === undefined || data === null ? { kind: 'gone' } : { kind: 'ready', data };
}

/** The body sent for an event: the Standard Webhooks payload shape, at most MAX_PAYLOAD_BYTES. */
export function buildPayload(type: WebhookEvent, timestamp: string, objectId: string, data: unknown): string {
  const body = (d: unknown) => JSON.stringify({ type, timestamp, data: d });
  let out = body(data);
  if (Buffer.byteLength(out) <= MAX_PAYLOAD_BYTES) return out;

  if (isJobView(data)) {
    const slim: JobView & { historyTruncated?: number; promptTruncated?: boolean } = { ...data, request: { ...data.request } };
    for (const keep of [10, 3, 0]) {
      if (slim.history.length > keep) {
        slim.historyTruncated = data.history.length - keep;
        slim.history = data.history.slice(data.history.length - keep);
      }
      out = body(slim);
      if (Buffer.byteLength(out) <= MAX_PAYLOAD_BYTES) return out;
    }
    slim.request.prompt = slim.request.prompt.slice(0, 1000);
    slim.promptTruncated = true;
    out = body(slim);
    if (Buffer.byteLength(out) <= MAX_PAYLOAD_BYTES) return out;
  }
  return body({ id: objectId, truncated: true, reason: `the object is larger than ${MAX_PAYLOAD_BYTES} bytes; GET it for the whole of it` });
}

function isJobView(data: unknown): data is JobView {
  const d = data as Partial<JobView> | null;
  return typeof d === 'object' && d !== null && Array.isArray(d.history) && typeof d.request?.prompt === 'string';
}
