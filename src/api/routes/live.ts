/**
 * Live status and cancellation (issue 3, part 4).
 *
 *   DELETE /v1/jobs/:id          cancel: 200 + view when a queued/retrying job is now canceled (or was
 *                                already), 202 + view when a running job was told to stop (its status
 *                                becomes canceled within moments), 409 NOT_CANCELABLE when it had
 *                                finished, 404 for an unknown id or another tenant's job.
 *   GET /v1/jobs/:id/events      Server-Sent Events: `event: status` with the job view (the same JSON
 *                                as GET /v1/jobs/:id) now and on every change, closed after the
 *                                terminal one (succeeded, failed, canceled).
 *   GET /v1/batches/:id/events   Server-Sent Events: `event: progress` with the batch view (as GET
 *                                /v1/batches/:id) now and on every change of its counts, closed when
 *                                every job has ended (finishedAt set, cancelled batches too).
 *
 * Changes come from ONE BullMQ QueueEvents per API process on the image queue (created on the first
 * stream, closed with the server), fanned out in memory: by job id for job streams, to every batch
 * stream otherwise. An event only says "look again": the stream re-reads the view and sends it when
 * it changed, so what a client sees is always a real view, in order. A batch stream first asks the
 * batch's member set (one ZMSCORE per group of event ids) whether an event concerns it, and re-reads
 * the batch view at most every BATCH_MIN_INTERVAL_MS. Every KEEP_ALIVE_MS a comment
 * keeps proxies from closing the connection and the view is re-read, a safety net should an event be
 * lost (a Redis reconnect, a trimmed event stream).
 *
 * Event ids count up per stream and continue from `Last-Event-ID` when an EventSource reconnects; a
 * reconnect to a stream that already ended gets 204, which tells EventSource to stop reconnecting.
 */
import { QueueEvents } from 'bullmq';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { batchKeys, BATCH_ID_PATTERN } from '../../batches/record.js';
import { getBatchView, type BatchView } from '../../batches/view.js';
import { PixelmillError, isPixelmillError } from '../../errors/catalogue.js';
import { cancelJob } from '../../queue/cancel.js';
import { createRedis } from '../../queue/connection.js';
import { IMAGE_QUEUE } from '../../queue/image-queue.js';
import { redisReady } from '../../queue/producer.js';
import { TERMINAL_STATUSES, type JobView } from '../../queue/job-view.js';
import type { RouteContext, RouteModule } from '../context.js';

/** Comment line interval, also the interval of the safety-net re-read. */
export const KEEP_ALIVE_MS = 15_000;

/** QueueEvents events after which a job's view may have changed. */
const JOB_EVENTS = ['active', 'waiting', 'delayed', 'progress', 'completed', 'failed', 'retries-exhausted', 'stalled', 'removed'] as const;

type Listener = (jobId: string) => void;

/**
 * One QueueEvents for the whole process, started on first use. Its first read starts after the last
 * event present when it was created, so a stream that registers and then reads its view misses no
 * change: what happened before the read is in the view, what happened after reaches the listener.
 */
export class QueueEventHub {
  private readonly byJob = new Map<string, Set<Listener>>();
  private readonly everyJob = new Set<Listener>();
  private readonly streams = new Set<() => void>();
  private started: Promise<{ events: QueueEvents; connection: Redis }> | undefined;
  private closed = false;

  constructor(private readonly ctx: RouteContext) {}

  /** Listen to one job's events (`jobId`), or every job's (`null`). Resolves once events flow. */
  async subscribe(jobId: string | null, listener: Listener): Promise<() => void> {
    await this.start();
    const set = jobId === null ? this.everyJob : this.byJob.get(jobId) ?? new Set<Listener>();
    if (jobId !== null) this.byJob.set(jobId, set);
    set.add(listener);
    return () => {
      set.delete(listener);
      if (jobId !== null && set.size === 0) this.byJob.delete(jobId);
    };
  }

  /** Open streams register how to end them, so the server can close while clients are connected. */
  track(end: () => void): () => void {
    this.streams.add(end);
    return () => void this.streams.delete(end);
  }

  endStreams(): void {
    for (const end of [...this.streams]) end();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.endStreams();
    const started = await this.started?.catch(() => undefined);
    if (!started) return;
    await started.events.close().catch(() => {});
    await started.connection.quit().catch(() => started.connection.disconnect());
  }

  private start(): Promise<unknown> {
    if (this.closed) return Promise.reject(new PixelmillError('QUEUE_UNAVAILABLE', 'the server is closing'));
    this.started ??= this.open().catch((err: unknown) => {
      this.started = undefined; // let the next stream try again
      throw new PixelmillError('QUEUE_UNAVAILABLE', `cannot follow the queue's events: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    });
    return this.started;
  }

  private async open(): Promise<{ events: QueueEvents; connection: Redis }> {
    const { config, queue, redis, logger } = this.ctx;
    await redisReady(redis, REDIS_READY_TIMEOUT_MS);
    const last = await redis.xrevrange(queue.keys['events']!, '+', '-', 'COUNT', 1);
    // QueueEvents blocks on XREAD: a connection of its own, which waits out a Redis restart.
    const connection = createRedis(config, 'worker');
    const events = new QueueEvents(IMAGE_QUEUE, { connection, prefix: config.QUEUE_PREFIX, lastEventId: last[0]?.[0] ?? '0-0' });
    events.on('error', (err) => logger.warn({ err: err.message }, 'queue events error'));
    const dispatch = (args: { jobId?: string }) => {
      const jobId = args.jobId;
      if (!jobId) return;
      for (const l of this.byJob.get(jobId) ?? []) l(jobId);
      for (const l of this.everyJob) l(jobId);
    };
    for (const name of JOB_EVENTS) events.on(name, dispatch as never);
    return { events, connection };
  }
}

/** A text/event-stream response written by hand (the reply is hijacked from fastify). */
interface EventStream {
  send(event: string, data: unknown): void;
  comment(text: string): void;
  end(): void;
}

function openEventStream(request: FastifyRequest, reply: FastifyReply): EventStream {
  const resumed = Number.parseInt(String(request.headers['last-event-id'] ?? ''), 10);
  let id = Number.isFinite(resumed) && resumed > 0 ? resumed : 0;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    // nginx and friends would otherwise buffer the stream
    'x-accel-buffering': 'no',
  });
  res.flushHeaders();
  const writable = () => !res.writableEnded && !res.destroyed;
  return {
    send(event, data) {
      if (writable()) res.write(`event: ${event}\nid: ${++id}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    comment(text) {
      if (writable()) res.write(`: ${text}\n\n`);
    },
    end() {
      if (writable()) res.end();
    },
  };
}

interface FollowOptions<V> {
  hub: QueueEventHub;
  request: FastifyRequest;
  reply: FastifyReply;
  /** The view now; undefined once it is gone (removed by retention). */
  load(): Promise<V | undefined>;
  /** Call `changed` whenever the view may have changed; resolves once events flow, to the unsubscribe. */
  subscribe(changed: () => void): Promise<() => void>;
  event: string;
  /** Views with equal keys are not sent twice. */
  changeKey(view: V): string;
  isFinal(view: V): boolean;
  /** The view already read by the route (the 404 check). */
  first: V;
  /** At most one re-read per this many ms (batch streams see every job's events). */
  minIntervalMs?: number;
}

/**
 * Stream a view: send it now, then whenever an event makes it change, and end after the final one.
 * Re-reads are serialized and coalesced: events during a read cause one more read, not one each.
 */
async function follow<V>(opts: FollowOptions<V>): Promise<FastifyReply | undefined> {
  const { hub, request, reply, load, changeKey, isFinal } = opts;
  const log = request.log;

  if (request.headers['last-event-id'] !== undefined && isFinal(opts.first)) {
    // An EventSource reconnecting to a stream that already ended: 204 makes it stop.
    return reply.code(204).send();
  }

  let done = false;
  let reading = false;
  let again = false;
  let lastKey: string | undefined;
  let lastReadAt = 0;
  let delayed: NodeJS.Timeout | undefined;
  // Set once the response is open; events before that are covered by the read right after it opens.
  let stream: EventStream | undefined = undefined;

  const emit = (view: V) => {
    const key = changeKey(view);
    if (key === lastKey) return;
    lastKey = key;
    stream?.send(opts.event, view);
    if (isFinal(view)) finish();
  };

  const refresh = async (): Promise<void> => {
    if (done || !stream) return;
    if (reading) {
      again = true;
      return;
    }
    const wait = (opts.minIntervalMs ?? 0) - (Date.now() - lastReadAt);
    if (wait > 0) {
      delayed ??= setTimeout(() => {
        delayed = undefined;
        void refresh();
      }, wait);
      return;
    }
    reading = true;
    try {
      do {
        again = false;
        lastReadAt = Date.now();
        const view = await load();
        if (done) return;
        if (view === undefined) {
          stream.send('error', { error: new PixelmillError('NOT_FOUND', 'it is gone (removed after JOB_RETENTION)').toJSON() });
          finish();
          return;
        }
        emit(view);
      } while (again && !done);
    } catch (err) {
      // Redis hiccup: keep the stream; the next event or keep-alive reads again.
      log.warn({ err: err instanceof Error ? err.message : String(err) }, 'event stream could not read the view');
    } finally {
      reading = false;
    }
  };

  const unsubscribe = await opts.subscribe(() => void refresh());
  let untrack: () => void = () => {};
  let keepAlive: NodeJS.Timeout | undefined = undefined;
  function finish(): void {
    if (done) return;
    done = true;
    clearInterval(keepAlive);
    clearTimeout(delayed);
    unsubscribe();
    untrack();
    stream?.end();
  }

  stream = openEventStream(request, reply);
  untrack = hub.track(finish);
  reply.raw.on('close', finish);
  keepAlive = setInterval(() => {
    stream?.comment('keep-alive');
    void refresh();
  }, KEEP_ALIVE_MS);

  emit(opts.first);
  // What changed between the first read and the subscription.
  if (!done) await refresh();
  return undefined; // hijacked: fastify sends nothing more
}

const isFinalJob = (v: JobView) => TERMINAL_STATUSES.includes(v.status);
/** What a client sees change: the status, a new attempt or history entry, the output. */
const jobChangeKey = (v: JobView) => `${v.status}|${v.attempts}|${v.history.length}|${v.output?.key ?? ''}`;

async function v1(v1: FastifyInstance, ctx: RouteContext): Promise<void> {
  const hub = new QueueEventHub(ctx);
  ctx.onClose(() => hub.close());
  // Open streams would keep server.close() waiting: end them first (onClose runs too late).
  v1.addHook('preClose', async () => hub.endStreams());

  v1.delete<{ Params: { id: string } }>('/jobs/:id', async (request, reply) => {
    const { id } = request.params;
    const tenant = ctx.tenantOf(request);
    const before = await ctx.producer.get(id, tenant);
    if (!before) throw new PixelmillError('NOT_FOUND', `No job ${id}`);
    if (before.status === 'canceled') return before; // DELETE is idempotent
    if (isFinalJob(before)) throw notCancelable(before);

    const outcome = await redisOp(ctx, `cancel job ${id}`, () => cancelJob({ config: ctx.config, redis: ctx.redis, queue: ctx.queue }, id));
    const after = await ctx.producer.get(id, tenant);
    if (!after) throw new PixelmillError('NOT_FOUND', `No job ${id}`);
    request.log.info({ jobId: id, outcome }, 'job cancel requested');
    if (outcome === 'already-finished') {
      if (after.status === 'canceled') return after;
      throw notCancelable(after);
    }
    void reply.code(outcome === 'canceled' ? 200 : 202);
    return after;
  });

  v1.get<{ Params: { id: string } }>('/jobs/:id/events', async (request, reply) => {
    const { id } = request.params;
    const tenant = ctx.tenantOf(request);
    const first = await ctx.producer.get(id, tenant);
    if (!first) throw new PixelmillError('NOT_FOUND', `No job ${id}`);
    return follow<JobView>({
      hub, request, reply, first, event: 'status',
      subscribe: (changed) => hub.subscribe(id, changed),
      load: () => ctx.producer.get(id, tenant), changeKey: jobChangeKey, isFinal: isFinalJob,
    });
  });

  v1.get<{ Params: { id: string } }>('/batches/:id/events', async (request, reply) => {
    const { id } = request.params;
    const tenant = ctx.tenantOf(request);
    const deps = { config: ctx.config, redis: ctx.redis };
    const load = async () => (BATCH_ID_PATTERN.test(id) ? redisOp(ctx, `read batch ${id}`, () => getBatchView(id, tenant, deps)) : undefined);
    const first = await load();
    if (!first) throw new PixelmillError('NOT_FOUND', `No batch ${id}`);
    const members = batchKeys(ctx.config, id).jobs;
    return follow<BatchView>({
      hub, request, reply, first, event: 'progress', minIntervalMs: BATCH_MIN_INTERVAL_MS,
      subscribe: async (changed) => {
        const filter = jobsOfBatch(ctx.redis, members, changed, request.log);
        const unsubscribe = await hub.subscribe(null, filter.seen);
        return () => {
          filter.stop();
          unsubscribe();
        };
      },
      load, changeKey: batchChangeKey, isFinal: isFinalBatch,
    });
  });
}

/** A batch stream re-reads the batch view at most this often (it counts in-flight jobs with a scan). */
const BATCH_MIN_INTERVAL_MS = 250;
/** Event job ids are checked against the batch's members in groups, at most this often. */
const MEMBERSHIP_CHECK_MS = 100;
/** More pending ids than this: skip the check and re-read (a busy queue; the re-read is throttled anyway). */
const MEMBERSHIP_CHECK_MAX = 1_000;

/** A batch ends when every job has ended (finishedAt), cancelled or not; or when it could not be stored. */
const isFinalBatch = (v: BatchView) => v.finishedAt !== null || v.status === 'failed_to_store';
const batchChangeKey = (v: BatchView) => `${v.status}|${JSON.stringify(v.counts)}|${v.costUsd}|${v.finishedAt ?? ''}`;

/**
 * QueueEvents only names the job: collect the ids seen and ask the batch's member set (one ZMSCORE)
 * whether any is one of ours before re-reading the batch.
 */
function jobsOfBatch(redis: Redis, membersKey: string, changed: () => void, log: FastifyRequest['log']): { seen: (jobId: string) => void; stop(): void } {
  const pending = new Set<string>();
  let timer: NodeJS.Timeout | undefined;
  const check = async () => {
    timer = undefined;
    const ids = [...pending];
    pending.clear();
    if (ids.length === 0) return;
    if (ids.length > MEMBERSHIP_CHECK_MAX) return changed();
    try {
      const scores = await redis.zmscore(membersKey, ...ids);
      if (scores.some((s) => s !== null)) changed();
    } catch (err) {
      log.warn({ err: err instanceof Error ? err.message : String(err) }, 'batch event stream could not check membership');
      changed();
    }
  };
  return {
    seen(jobId) {
      pending.add(jobId);
      timer ??= setTimeout(() => void check(), MEMBERSHIP_CHECK_MS);
    },
    stop() {
      clearTimeout(timer);
      pending.clear();
    },
  };
}

/** Run a Redis operation on the API's fail-fast connection: wait for its first connect, report an outage as QUEUE_UNAVAILABLE. */
async function redisOp<T>(ctx: RouteContext, what: string, op: () => Promise<T>): Promise<T> {
  try {
    await redisReady(ctx.redis, REDIS_READY_TIMEOUT_MS);
    return await op();
  } catch (err) {
    if (isPixelmillError(err)) throw err;
    throw new PixelmillError('QUEUE_UNAVAILABLE', `Redis did not complete ${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
const REDIS_READY_TIMEOUT_MS = 5_000;

function notCancelable(view: JobView): PixelmillError {
  return new PixelmillError('NOT_CANCELABLE', `job ${view.id} already ${view.status}`, { details: { jobId: view.id, status: view.status } });
}

export const liveRoutes: RouteModule = { v1 };
