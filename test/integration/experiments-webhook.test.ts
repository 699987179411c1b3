/**
 * experiment.completed on the wire: the finisher queues it, the webhook worker renders the experiment
 * (the same JSON as GET /v1/experiments/:id) and delivers it to a real receiver that verifies every
 * delivery with the official `standardwebhooks` library. Plus the payload compaction of large
 * experiments.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { afterEach, describe, expect, it } from 'vitest';
import { experimentWebhookData } from '../../src/experiments/webhook.js';
import type { ExperimentView } from '../../src/experiments/service.js';
import { silentLogger } from '../../src/logging/logger.js';
import { MAX_PAYLOAD_BYTES } from '../../src/webhooks/render.js';
import { startWebhookWorker, type RunningWebhookWorker } from '../../src/webhooks/worker.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { createExperiment, getExperiment, settleExperiment } from '../support/experiments.js';
import { waitFor } from '../support/stack.js';

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
}

let p: Pipeline | undefined;
let hooks: RunningWebhookWorker | undefined;
let receiver: Server | undefined;
afterEach(async () => {
  await hooks?.close(true);
  await p?.close();
  await new Promise<void>((resolve) => (receiver ? receiver.close(() => resolve()) : resolve()));
  hooks = undefined;
  p = undefined;
  receiver = undefined;
});

async function startReceiver(): Promise<{ url: string; received: Received[] }> {
  const received: Received[] = [];
  receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => receiver!.listen(0, '127.0.0.1', resolve));
  const { port } = receiver.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/hooks/pixelmill`, received };
}

describe('experiment.completed', () => {
  it('is delivered once, signed, with the experiment as GET shows it', async () => {
    const { url, received } = await startReceiver();
    p = await startPipeline({
      env: { WEBHOOK_SECRET: SECRET, WEBHOOK_ALLOWED_CIDRS: '127.0.0.1/32', WEBHOOK_RETRY_SCHEDULE: '0s,200ms,200ms' },
    });
    hooks = startWebhookWorker(p.config, { logger: silentLogger() });
    const made = await createExperiment(p, {
      prompt: 'a kite over dunes exp-hook',
      repeats: 2,
      webhook: { url, events: ['experiment.completed'] },
      variants: [{ name: 'fast', model: 'fast' }, { name: 'blocked', model: 'fast', promptSuffix: ' [sim:block]' }],
    });
    expect(made.status).toBe(202);
    const id = made.body['id'] as string;
    const view = await settleExperiment(p, id);
    await waitFor('the delivery', () => received.length >= 1);

    const { headers, body } = received[0]!;
    const verified = new Webhook(SECRET).verify(body, {
      'webhook-id': String(headers['webhook-id']),
      'webhook-timestamp': String(headers['webhook-timestamp']),
      'webhook-signature': String(headers['webhook-signature']),
    }) as { type: string; timestamp: string; data: Record<string, any> };
    expect(verified.type).toBe('experiment.completed');
    expect(Buffer.byteLength(body)).toBeLessThanOrEqual(MAX_PAYLOAD_BYTES);
    const data = verified.data;
    expect(data['id']).toBe(id);
    expect(data['status']).toBe('completed');
    expect(data['compacted']).toBeUndefined();
    expect(data['variants'].map((v: any) => [v.name, v.summary.succeeded, v.summary.failed])).toEqual([['fast', 2, 0], ['blocked', 0, 2]]);
    expect(data['variants'][1].runs[0].error.code).toBe('CONTENT_BLOCKED');
    // Same runs as GET (URLs are presigned afresh by each render, so compare the rest).
    const strip = (v: Record<string, any>) => v['variants'].map((x: any) => x.runs.map((r: any) => ({ ...r, output: r.output && { ...r.output, url: undefined } })));
    expect(strip(data)).toEqual(strip(view));
    const image = await fetch(data['variants'][0].runs[0].output.url);
    expect(image.status).toBe(200);

    // One event, one delivery: the record says delivered and nothing else arrives for it.
    const listed = await waitFor('the delivery record', async () => {
      const res = await fetch(`${p!.api.url}/v1/webhooks/deliveries?status=delivered`);
      const page = (await res.json()) as { deliveries?: { objectId: string; type: string }[] };
      const mine = (page.deliveries ?? []).filter((d) => d.objectId === id);
      return mine.length > 0 ? mine : undefined;
    });
    expect(listed).toHaveLength(1);
    expect(received.filter((r) => r.headers['webhook-id'] === headers['webhook-id'])).toHaveLength(1);
    expect(received).toHaveLength(1);
    expect((await getExperiment(p, id)).body['status']).toBe('completed');
  });
});

describe('experimentWebhookData', () => {
  const run = (i: number, status: 'succeeded' | 'failed') => ({
    jobId: `img_${String(i).padStart(22, '0')}`, repeat: (i % 10) + 1, status, model: 'gemini-3.1-flash-image', family: 'fast' as const,
    latencyMs: 1234, costUsd: 0.0672, attempts: 1,
    ...(status === 'succeeded'
      ? { output: { key: `images/img_${i}.jpg`, url: `http://127.0.0.1:9000/bucket/images/img_${i}.jpg?X-Amz-Signature=${'f'.repeat(400)}`, width: 1024, height: 1024, mimeType: 'image/jpeg' } }
      : { error: { code: 'CONTENT_BLOCKED', message: 'blocked '.repeat(40) } }),
  });
  const summary = { runs: 10, succeeded: 5, failed: 5, canceled: 0, pending: 0, meanLatencyMs: 1234, totalCostUsd: 0.672 };
  const viewWith = (variants: number, repeats: number): ExperimentView => ({
    id: 'exp_AAAAAAAAAAAAAAAAAAAAAA', status: 'completed', prompt: 'p'.repeat(2_000), repeats, createdAt: '2026-01-01T00:00:00.000Z',
    finishedAt: '2026-01-01T00:01:00.000Z', metadata: null, counts: summary, winner: null,
    variants: Array.from({ length: variants }, (_, v) => ({
      name: `v${v}`, tier: 'draft' as const, model: 'fast' as const, size: '1K' as const, aspectRatio: '1:1' as const, prompt: 'q'.repeat(2_000),
      runs: Array.from({ length: repeats }, (_, r) => run(v * repeats + r, r % 2 === 0 ? 'succeeded' : 'failed')),
      summary,
    })),
  });

  it('keeps a small experiment whole', () => {
    const small = viewWith(2, 1);
    expect(experimentWebhookData(small)).toBe(small);
  });

  it('keeps the runs of a middling one with short prompts and errors', () => {
    const view = viewWith(4, 5);
    expect(Buffer.byteLength(JSON.stringify(view))).toBeGreaterThan(MAX_PAYLOAD_BYTES);
    const data = experimentWebhookData(view);
    expect(data.compacted).toBe('runs');
    expect(data.variants[0]!.runs).toHaveLength(5);
    expect(data.variants[0]!.runs[0]!.output?.url).toContain('X-Amz-Signature');
    expect(data.variants[0]!.prompt.length).toBeLessThanOrEqual(301);
    expect(Buffer.byteLength(JSON.stringify(data))).toBeLessThanOrEqual(MAX_PAYLOAD_BYTES - 400);
  });

  it('falls back to the summaries for the largest (20 × 10)', () => {
    const data = experimentWebhookData(viewWith(20, 10));
    expect(data.compacted).toBe('summaries');
    expect(data.variants).toHaveLength(20);
    expect(data.variants.every((v) => v.runs.length === 0 && v.summary.runs === 10)).toBe(true);
    expect(Buffer.byteLength(JSON.stringify(data))).toBeLessThanOrEqual(MAX_PAYLOAD_BYTES - 400);
  });
});
