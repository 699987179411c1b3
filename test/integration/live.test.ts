/**
 * Live status over Server-Sent Events (GET /v1/jobs/:id/events): the stream shows the job's status
 * changes as they happen and ends at its terminal state.
 */
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logging/logger.js';
import { startImageWorker, type RunningImageWorker } from '../../src/worker/image-worker.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { waitFor } from '../support/stack.js';

let p: Pipeline | undefined;
const workers: RunningImageWorker[] = [];
const streams: SseClient[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.close();
  for (const w of workers.splice(0)) await w.close(500);
  await p?.close();
  p = undefined;
});

interface SseEvent {
  event: string;
  id: string | undefined;
  data: string;
}

interface SseClient {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** Events parsed so far (comments are counted apart). */
  events: SseEvent[];
  comments: string[];
  /** Resolves when the server ends the stream. */
  ended: Promise<void>;
  close(): void;
}

/** A minimal text/event-stream reader over undici, enough to check what the server writes. */
async function openSse(url: string, headers: Record<string, string> = {}): Promise<SseClient> {
  const res = await request(url, { headers: { accept: 'text/event-stream', ...headers } });
  const events: SseEvent[] = [];
  const comments: string[] = [];
  const decoder = new TextDecoder();
  const ended = (async () => {
    let buffer = '';
    for await (const chunk of res.body) {
      buffer += decoder.decode(chunk as Buffer, { stream: true });
      for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event: SseEvent = { event: 'message', id: undefined, data: '' };
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) comments.push(line.slice(1).trim());
          else if (line.startsWith('event: ')) event.event = line.slice(7);
          else if (line.startsWith('id: ')) event.id = line.slice(4);
          else if (line.startsWith('data: ')) data.push(line.slice(6));
        }
        if (data.length > 0) events.push({ ...event, data: data.join('\n') });
      }
    }
    expect(buffer).toBe(''); // nothing half-written
  })();
  ended.catch(() => {});
  const client: SseClient = { status: res.statusCode, headers: res.headers, events, comments, ended, close: () => res.body.destroy() };
  streams.push(client);
  return client;
}

const views = (s: SseClient) => s.events.map((e) => JSON.parse(e.data) as Record<string, any>);
/** Statuses with repeats folded: a new history entry within a status is sent too, but is no change of status. */
const statusSequence = (s: SseClient) => views(s).map((v) => v['status'] as string).filter((st, i, all) => i === 0 || all[i - 1] !== st);

describe('job events (SSE)', () => {
  it('sees queued → running → succeeded and ends at the terminal state', async () => {
    // timeScale 0.05: a 1K image takes 250-500 ms, long enough to be seen running.
    p = await startPipeline({ worker: false, sim: { timeScale: 0.05 } });
    const { body } = await p.submit({ prompt: 'a lighthouse sse-happy', tier: 'draft' });
    const id = body['id'] as string;

    const sse = await openSse(`${p.api.url}/v1/jobs/${id}/events`);
    expect(sse.status).toBe(200);
    expect(sse.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(sse.headers['cache-control']).toContain('no-cache');
    await waitFor('the initial event', () => sse.events.length === 1);
    expect(views(sse)[0]).toMatchObject({ id, status: 'queued' });

    workers.push(startImageWorker(p.config, { logger: silentLogger() }));
    await sse.ended;

    expect(statusSequence(sse)).toEqual(['queued', 'running', 'succeeded']);
    expect(sse.events.every((e) => e.event === 'status')).toBe(true);
    expect(sse.events.map((e) => e.id)).toEqual(sse.events.map((_, i) => String(i + 1)));
    const last = views(sse).at(-1)!;
    const get = await p.get(id);
    expect(last).toMatchObject({ id, status: 'succeeded', attempts: 1, output: { key: get['output']['key'], mimeType: 'image/jpeg' } });
    expect(last['output']['url']).toMatch(/^http/);
    // Each event is the same JSON as GET, compact on one data line.
    expect(Object.keys(last).sort()).toEqual(Object.keys(get).sort());
  });

  it('shows a retry: running → retrying → running → succeeded', async () => {
    // random 0.999 makes the full-jitter backoff ~400 ms: the retrying phase is surely seen.
    p = await startPipeline({ worker: false, sim: { timeScale: 0.2 }, env: { BACKOFF_BASE_MS: 400, BACKOFF_CAP_MS: 400 } });
    const { body } = await p.submit({ prompt: 'busy [sim:503*1] sse-retry', tier: 'draft', size: '512' });
    const id = body['id'] as string;
    const sse = await openSse(`${p.api.url}/v1/jobs/${id}/events`);
    await waitFor('the initial event', () => sse.events.length === 1);
    workers.push(startImageWorker(p.config, { logger: silentLogger(), random: () => 0.999 }));
    await sse.ended;
    expect(statusSequence(sse)).toEqual(['queued', 'running', 'retrying', 'running', 'succeeded']);
    const retrying = views(sse).find((v) => v['status'] === 'retrying')!;
    expect(retrying['history'].map((h: { outcome: string }) => h.outcome)).toEqual(['UPSTREAM_UNAVAILABLE']);
  });

  it('ends with canceled when the job is cancelled', async () => {
    p = await startPipeline({ worker: false });
    const { body } = await p.submit({ prompt: 'not today sse-cancel', tier: 'draft' });
    const id = body['id'] as string;
    const sse = await openSse(`${p.api.url}/v1/jobs/${id}/events`);
    await waitFor('the initial event', () => sse.events.length === 1);

    const res = await request(`${p.api.url}/v1/jobs/${id}`, { method: 'DELETE' });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    await sse.ended;
    expect(statusSequence(sse)).toEqual(['queued', 'canceled']);
    expect(views(sse).at(-1)!['error']).toMatchObject({ code: 'CANCELED' });
  });

  it('ends with canceled when a running job is cancelled', async () => {
    p = await startPipeline();
    const { body } = await p.submit({ prompt: 'forever [sim:hang] sse-cancel-running', tier: 'draft' });
    const id = body['id'] as string;
    await waitFor('the job to run', async () => (await p!.get(id))['status'] === 'running');
    const sse = await openSse(`${p.api.url}/v1/jobs/${id}/events`);
    await waitFor('the initial event', () => sse.events.length === 1);

    const res = await request(`${p.api.url}/v1/jobs/${id}`, { method: 'DELETE' });
    expect(res.statusCode).toBe(202);
    await res.body.dump();
    await sse.ended;
    expect(statusSequence(sse)).toEqual(['running', 'canceled']);
  });

  it('sends a finished job\'s final view and ends; a reconnecting EventSource gets 204 and stops', async () => {
    p = await startPipeline();
    const { body } = await p.submit({ prompt: 'quick sse-finished', tier: 'draft' });
    const id = body['id'] as string;
    await p.settle(id);

    const sse = await openSse(`${p.api.url}/v1/jobs/${id}/events`);
    await sse.ended;
    expect(statusSequence(sse)).toEqual(['succeeded']);

    const again = await request(`${p.api.url}/v1/jobs/${id}/events`, { headers: { accept: 'text/event-stream', 'last-event-id': '1' } });
    expect(again.statusCode).toBe(204);
    await again.body.dump();
  });

  it('continues event ids after Last-Event-ID', async () => {
    p = await startPipeline({ worker: false });
    const { body } = await p.submit({ prompt: 'resume sse-resume', tier: 'draft' });
    const sse = await openSse(`${p.api.url}/v1/jobs/${body['id']}/events`, { 'last-event-id': '41' });
    await waitFor('the initial event', () => sse.events.length === 1);
    expect(sse.events[0]!.id).toBe('42');
  });

  it('answers 404 for an unknown job, and the server closes while streams are open', async () => {
    p = await startPipeline({ worker: false });
    const missing = await request(`${p.api.url}/v1/jobs/img_nosuchjob/events`);
    expect(missing.statusCode).toBe(404);
    expect(((await missing.body.json()) as { error: { code: string } }).error.code).toBe('NOT_FOUND');

    const { body } = await p.submit({ prompt: 'waiting sse-close', tier: 'draft' });
    const sse = await openSse(`${p.api.url}/v1/jobs/${body['id']}/events`);
    await waitFor('the initial event', () => sse.events.length === 1);
    await p.api.close(); // would hang if the open stream kept the server
    await sse.ended;
  });

  it('is scoped to the tenant', async () => {
    const ALICE = 'alice-key-0123456789abcdef';
    const BOB = 'bob-key-0123456789abcdef';
    p = await startPipeline({ worker: false, env: { API_KEYS: `alice:${ALICE},bob:${BOB}`, HOST: '127.0.0.1' } });
    const created = await request(`${p.api.url}/v1/jobs`, {
      method: 'POST', headers: { authorization: `Bearer ${ALICE}`, 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'alice sse-tenant' }),
    });
    const id = ((await created.body.json()) as { id: string }).id;
    const bobs = await request(`${p.api.url}/v1/jobs/${id}/events`, { headers: { authorization: `Bearer ${BOB}` } });
    expect(bobs.statusCode).toBe(404);
    await bobs.body.dump();
    const anonymous = await request(`${p.api.url}/v1/jobs/${id}/events`);
    expect(anonymous.statusCode).toBe(401);
    await anonymous.body.dump();
    const alices = await openSse(`${p.api.url}/v1/jobs/${id}/events`, { authorization: `Bearer ${ALICE}` });
    expect(alices.status).toBe(200);
    await waitFor('the initial event', () => alices.events.length === 1);
    expect(views(alices)[0]).toMatchObject({ id, status: 'queued' });
  });
});

describe('batch events (SSE)', () => {
  const postBatch = async (body: unknown) => {
    const res = await request(`${p!.api.url}/v1/batches`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const json = (await res.body.json()) as Record<string, any>;
    expect(res.statusCode, JSON.stringify(json)).toBe(202);
    return json['id'] as string;
  };

  it('sends progress with the counts as jobs end and ends when every job has ended', async () => {
    p = await startPipeline({ worker: false, sim: { timeScale: 0.05 } });
    const id = await postBatch({ defaults: { tier: 'draft' }, jobs: [{ prompt: 'one sse-batch' }, { prompt: 'two sse-batch' }, { prompt: 'three sse-batch' }] });
    // Another job in the same queue, not in the batch: its events must not end or disturb the stream.
    const outsider = await p.submit({ prompt: 'outsider sse-batch-outsider', tier: 'draft' });

    const sse = await openSse(`${p.api.url}/v1/batches/${id}/events`);
    expect(sse.status).toBe(200);
    await waitFor('the initial event', () => sse.events.length === 1);
    expect(views(sse)[0]).toMatchObject({ id, total: 3, counts: { queued: 3, succeeded: 0 }, finishedAt: null });

    workers.push(startImageWorker(p.config, { logger: silentLogger() }));
    await sse.ended;
    expect(sse.events.every((e) => e.event === 'progress')).toBe(true);
    const all = views(sse);
    const last = all.at(-1)!;
    expect(last).toMatchObject({ id, status: 'completed', counts: { queued: 0, running: 0, retrying: 0, succeeded: 3, failed: 0, canceled: 0 }, progress: 1 });
    expect(last['finishedAt']).not.toBeNull();
    expect(all.length).toBeGreaterThan(2);
    const done = all.map((v) => v['counts']['succeeded'] as number);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect((await p.settle(outsider.body['id'] as string))['status']).toBe('succeeded');
  });

  it('ends with the canceled batch when it is cancelled', async () => {
    p = await startPipeline({ worker: false });
    const id = await postBatch({ jobs: [{ prompt: 'one sse-batch-cancel' }, { prompt: 'two sse-batch-cancel' }] });
    const sse = await openSse(`${p.api.url}/v1/batches/${id}/events`);
    await waitFor('the initial event', () => sse.events.length === 1);
    const res = await request(`${p.api.url}/v1/batches/${id}`, { method: 'DELETE' });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    await sse.ended;
    expect(views(sse).at(-1)).toMatchObject({ id, status: 'canceled', counts: { canceled: 2, queued: 0 } });
  });

  it('answers 404 for an unknown batch', async () => {
    p = await startPipeline({ worker: false });
    for (const id of ['bat_nosuchbatch', 'not-a-batch-id']) {
      const res = await request(`${p.api.url}/v1/batches/${id}/events`);
      expect(res.statusCode).toBe(404);
      await res.body.dump();
    }
  });
});
