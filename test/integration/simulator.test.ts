/**
 * The Gemini simulator over real HTTP: wire shapes, real images, validation, quotas, peak hours,
 * fault markers, aborts, stats and seeded determinism.
 */
import sharp from 'sharp';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { isImageCached } from '../../src/simulator/images.js';
import {
  promptHash,
  startSimulator,
  type RunningSimulator,
  type SimRequestLog,
  type SimulatorOptions,
  type SimulatorStats,
} from '../../src/simulator/server.js';
import { waitFor } from '../support/stack.js';

const KEY = 'test-key';
const FAST = 'gemini-3.1-flash-image';
const PRO = 'gemini-3-pro-image';

interface Part {
  text?: string;
  thought?: boolean;
  thoughtSignature?: string;
  inlineData?: { mimeType: string; data: string };
}
interface GenResponse {
  candidates?: { content: { role?: string; parts?: Part[] }; finishReason: string; finishMessage?: string; index: number }[];
  promptFeedback?: { blockReason: string };
  usageMetadata: {
    promptTokenCount: number;
    candidatesTokenCount?: number;
    totalTokenCount: number;
    thoughtsTokenCount?: number;
    promptTokensDetails: { modality: string; tokenCount: number }[];
    candidatesTokensDetails?: { modality: string; tokenCount: number }[];
    serviceTier?: string;
  };
  modelVersion: string;
  responseId: string;
}
interface ErrorBody {
  error: { code: number; message: string; status: string; details?: Record<string, unknown>[] };
}

const running: RunningSimulator[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.close()));
});

/** Defaults for tests: no latency, never peak (the wall clock must not decide a test). */
async function sim(opts: Partial<SimulatorOptions> = {}): Promise<RunningSimulator> {
  const s = await startSimulator({ timeScale: 0, peak: 'off', ...opts });
  running.push(s);
  return s;
}

interface Ask {
  size?: string;
  ratio?: string;
  thoughts?: boolean;
  modalities?: string[];
  images?: string[];
  generationConfig?: Record<string, unknown>;
}

function body(prompt: string, a: Ask = {}): Record<string, unknown> {
  return {
    contents: [
      { role: 'user', parts: [{ text: prompt }, ...(a.images ?? []).map((data) => ({ inlineData: { mimeType: 'image/png', data } }))] },
    ],
    generationConfig: {
      responseModalities: a.modalities ?? ['TEXT', 'IMAGE'],
      imageConfig: { aspectRatio: a.ratio ?? '1:1', imageSize: a.size ?? '1K' },
      ...(a.thoughts ? { thinkingConfig: { includeThoughts: true } } : {}),
      ...a.generationConfig,
    },
  };
}

async function call(
  s: RunningSimulator,
  model: string,
  payload: unknown,
  opts: { key?: string | null; query?: string; signal?: AbortSignal; raw?: string } = {},
): Promise<{ status: number; headers: Record<string, unknown>; text: string; ms: number }> {
  const started = performance.now();
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (opts.key !== null) headers['x-goog-api-key'] = opts.key ?? KEY;
  const res = await request(`${s.url}/v1beta/models/${model}:generateContent${opts.query ?? ''}`, {
    method: 'POST',
    headers,
    body: opts.raw ?? JSON.stringify(payload),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, ms: performance.now() - started };
}

async function generate(s: RunningSimulator, model: string, prompt: string, a: Ask = {}): Promise<{ status: number; json: GenResponse; ms: number }> {
  const r = await call(s, model, body(prompt, a));
  return { status: r.status, json: JSON.parse(r.text) as GenResponse, ms: r.ms };
}

async function fails(s: RunningSimulator, model: string, payload: unknown, opts: Parameters<typeof call>[3] = {}): Promise<{ status: number; error: ErrorBody['error']; headers: Record<string, unknown> }> {
  const r = await call(s, model, payload, opts);
  return { status: r.status, error: (JSON.parse(r.text) as ErrorBody).error, headers: r.headers };
}

function finalImages(r: GenResponse): Part[] {
  return (r.candidates?.[0]?.content.parts ?? []).filter((p) => p.inlineData && !p.thought);
}

async function decode(part: Part): Promise<{ format: string | undefined; width: number | undefined; height: number | undefined }> {
  const meta = await sharp(Buffer.from(part.inlineData!.data, 'base64')).metadata();
  return { format: meta.format, width: meta.width, height: meta.height };
}

function detail(error: ErrorBody['error'], type: string): Record<string, unknown> | undefined {
  return error.details?.find((d) => d['@type'] === `type.googleapis.com/google.rpc.${type}`);
}

async function getJson<T>(url: string): Promise<T> {
  const res = await request(url);
  return (await res.body.json()) as T;
}

describe('simulator: successful answers', () => {
  it('answers in the live shape with thoughts, a signed JPEG of the exact size and realistic usage', async () => {
    const s = await sim();
    const r = await generate(s, FAST, 'a lighthouse at dusk', { size: '1K', ratio: '16:9', thoughts: true });
    expect(r.status).toBe(200);
    const candidate = r.json.candidates![0]!;
    expect(candidate.finishReason).toBe('STOP');
    expect(candidate.index).toBe(0);
    expect(candidate.content.role).toBe('model');
    const parts = candidate.content.parts!;
    // Thoughts come first and are unsigned; the thought image is small.
    expect(parts[0]).toMatchObject({ thought: true });
    expect(typeof parts[0]!.text).toBe('string');
    const thoughtImage = parts.find((p) => p.thought && p.inlineData);
    expect(thoughtImage?.thoughtSignature).toBeUndefined();
    expect((await decode(thoughtImage!)).width).toBeLessThanOrEqual(400);

    const finals = finalImages(r.json);
    expect(finals).toHaveLength(1);
    const image = finals[0]!;
    expect(image.inlineData!.mimeType).toBe('image/jpeg');
    expect(image.thoughtSignature).toMatch(/^[A-Za-z0-9+/]+=*$/);
    expect(image.thoughtSignature!.length).toBeGreaterThan(300);
    expect(await decode(image)).toEqual({ format: 'jpeg', width: 1376, height: 768 });
    // Noise keeps the payload realistic: a 1K JPEG is hundreds of KB, not a few bytes.
    expect(Buffer.from(image.inlineData!.data, 'base64').length).toBeGreaterThan(100_000);
    expect(parts.at(-1)).toBe(image);

    const u = r.json.usageMetadata;
    expect(u.candidatesTokensDetails).toEqual([{ modality: 'IMAGE', tokenCount: 1120 }]);
    expect(u.candidatesTokenCount!).toBeGreaterThan(1120);
    expect(u.candidatesTokenCount!).toBeLessThan(1500);
    expect(u.thoughtsTokenCount).toBeGreaterThan(0);
    expect(u.totalTokenCount).toBe(u.promptTokenCount + u.candidatesTokenCount! + u.thoughtsTokenCount!);
    expect(u.promptTokensDetails[0]).toMatchObject({ modality: 'TEXT' });
    expect(u.serviceTier).toBe('standard');
    expect(r.json.modelVersion).toBe(FAST);
    expect(r.json.responseId).toMatch(/^[A-Za-z0-9_-]{20,}$/);
  });

  it('renders every family and size at its pixel size with the family IMAGE tokens', async () => {
    const s = await sim();
    const cases = [
      { model: FAST, size: '512', ratio: '1:1', w: 512, h: 512, tokens: 747 },
      { model: FAST, size: '2K', ratio: '1:4', w: 1024, h: 4096, tokens: 1680 },
      { model: PRO, size: '1K', ratio: '21:9', w: 1584, h: 672, tokens: 1120 },
      { model: PRO, size: '2K', ratio: '3:4', w: 1792, h: 2400, tokens: 1120 },
    ];
    for (const c of cases) {
      const r = await generate(s, c.model, `case ${c.size} ${c.ratio}`, { size: c.size, ratio: c.ratio });
      expect(r.status).toBe(200);
      expect(await decode(finalImages(r.json)[0]!)).toEqual({ format: 'jpeg', width: c.w, height: c.h });
      expect(r.json.usageMetadata.candidatesTokensDetails).toEqual([{ modality: 'IMAGE', tokenCount: c.tokens }]);
      expect(r.json.modelVersion).toBe(c.model);
    }
  });

  it('keeps 4K 1:8 (1536x12288) affordable and decodable', async () => {
    const s = await sim();
    const r = await generate(s, FAST, 'a very tall banner', { size: '4K', ratio: '1:8' });
    expect(r.status).toBe(200);
    expect(await decode(finalImages(r.json)[0]!)).toEqual({ format: 'jpeg', width: 1536, height: 12288 });
    expect(r.ms).toBeLessThan(15_000);
  });

  it('answers PNG when configured', async () => {
    const s = await sim({ outputMimeType: 'image/png' });
    const r = await generate(s, PRO, 'png please', { size: '1K', ratio: '4:3' });
    const image = finalImages(r.json)[0]!;
    expect(image.inlineData!.mimeType).toBe('image/png');
    expect(await decode(image)).toEqual({ format: 'png', width: 1200, height: 896 });
  });

  it('caches encoded images: the second identical render is served from memory', async () => {
    const s = await sim();
    expect(isImageCached('image/jpeg', 4096, 4096)).toBe(false);
    const first = await generate(s, PRO, 'big one', { size: '4K', ratio: '1:1' });
    expect(isImageCached('image/jpeg', 4096, 4096)).toBe(true);
    const second = await generate(s, PRO, 'big two', { size: '4K', ratio: '1:1' });
    expect(finalImages(second.json)[0]!.inlineData!.data).toBe(finalImages(first.json)[0]!.inlineData!.data);
    expect(second.ms).toBeLessThan(first.ms);
  });

  it('accepts big input images, counts them as prompt IMAGE tokens, and rejects bodies over 20 MiB', async () => {
    const s = await sim();
    const input = Buffer.alloc(11 * 1024 * 1024, 7).toString('base64'); // ~15 MB of base64
    const ok = await generate(s, PRO, 'edit this', { images: [input] });
    expect(ok.status).toBe(200);
    expect(ok.json.usageMetadata.promptTokensDetails).toContainEqual({ modality: 'IMAGE', tokenCount: 560 });
    expect(s.requests().at(-1)).toMatchObject({ inputImages: 1, status: 200 });

    const huge = Buffer.alloc(16 * 1024 * 1024, 7).toString('base64');
    const tooBig = await fails(s, PRO, body('too big', { images: [huge] }));
    expect(tooBig.status).toBe(400);
    expect(tooBig.error).toMatchObject({ code: 400, status: 'INVALID_ARGUMENT', message: 'Request payload size exceeds the limit: 20971520 bytes.' });
  });

  it('answers text only when IMAGE is not among the response modalities', async () => {
    const s = await sim();
    const r = await generate(s, FAST, 'describe a cat', { modalities: ['TEXT'] });
    expect(r.status).toBe(200);
    expect(finalImages(r.json)).toHaveLength(0);
    expect(r.json.candidates![0]!.content.parts!.some((p) => typeof p.text === 'string')).toBe(true);
  });

  it('accepts snake_case proto field names and the ?key= query parameter', async () => {
    const s = await sim();
    const payload = {
      contents: [{ parts: [{ text: 'snake' }] }],
      generation_config: { response_modalities: ['IMAGE'], image_config: { aspect_ratio: '9:16', image_size: '512' } },
    };
    const r = await call(s, FAST, payload, { key: null, query: `?key=${KEY}` });
    expect(r.status).toBe(200);
    expect(await decode(finalImages(JSON.parse(r.text) as GenResponse)[0]!)).toMatchObject({ width: 384, height: 688 });
  });
});

describe('simulator: rejections', () => {
  it('answers 404 with the real message for unknown and retired models', async () => {
    const s = await sim();
    const unknown = await fails(s, 'gemini-9-image', body('x'));
    expect(unknown.status).toBe(404);
    expect(unknown.error).toEqual({
      code: 404,
      status: 'NOT_FOUND',
      message:
        'models/gemini-9-image is not found for API version v1beta, or is not supported for generateContent. ' +
        'Call ListModels to see the list of available models and their supported methods.',
    });

    expect((await generate(s, 'gemini-3-pro-image-preview', 'before retirement')).status).toBe(200);
    s.setModels([{ id: FAST, family: 'fast' }, { id: PRO, family: 'pro' }]);
    const retired = await fails(s, 'gemini-3-pro-image-preview', body('after retirement'));
    expect(retired.status).toBe(404);
    expect(retired.error.message).toContain('models/gemini-3-pro-image-preview is not found');

    // Back again through the control endpoint.
    const res = await request(`${s.url}/_sim/models`, {
      method: 'POST',
      body: JSON.stringify({ models: [{ id: 'gemini-3-pro-image-preview', family: 'pro' }] }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect((await generate(s, 'gemini-3-pro-image-preview', 'revived')).status).toBe(200);
    expect((await fails(s, FAST, body('now gone'))).status).toBe(404);
  });

  it('rejects sizes and ratios the family cannot render', async () => {
    const s = await sim();
    const pro512 = await fails(s, PRO, body('x', { size: '512' }));
    expect(pro512.status).toBe(400);
    expect(pro512.error).toMatchObject({ code: 400, status: 'INVALID_ARGUMENT' });
    expect(pro512.error.message).toContain('512');
    const pro18 = await fails(s, PRO, body('x', { ratio: '1:8' }));
    expect(pro18.status).toBe(400);
    expect(pro18.error.message).toContain('1:8');
    const lower = await fails(s, FAST, body('x', { size: '1k' }));
    expect(lower.status).toBe(400);
    // The same requests are fine for Nano Banana 2.
    expect((await generate(s, FAST, 'x', { size: '512', ratio: '1:8' })).status).toBe(200);
    expect(s.stats()[PRO]).toMatchObject({ requests: 2, rejected: 2, ok: 0 });
  });

  it('rejects missing and invalid API keys with API_KEY_INVALID', async () => {
    const open = await sim();
    const missing = await fails(open, FAST, body('x'), { key: null });
    expect(missing.status).toBe(400);
    expect(missing.error.message).toBe('API key not valid. Please pass a valid API key.');
    expect(missing.error.status).toBe('INVALID_ARGUMENT');
    expect(detail(missing.error, 'ErrorInfo')).toMatchObject({ reason: 'API_KEY_INVALID', domain: 'googleapis.com' });
    expect((await call(open, FAST, body('any key'), { key: 'whatever' })).status).toBe(200);

    const strict = await sim({ apiKeys: ['right-key'] });
    const wrong = await fails(strict, FAST, body('x'), { key: 'wrong-key' });
    expect(wrong.status).toBe(400);
    expect(detail(wrong.error, 'ErrorInfo')).toMatchObject({ reason: 'API_KEY_INVALID' });
    expect((await call(strict, FAST, body('x'), { key: 'right-key' })).status).toBe(200);
  });

  it('rejects malformed JSON, unknown fields and unsupported thinking levels like Google', async () => {
    const s = await sim();
    const malformed = await fails(s, FAST, undefined, { raw: '{"contents": [}' });
    expect(malformed.status).toBe(400);
    expect(malformed.error.status).toBe('INVALID_ARGUMENT');
    expect(malformed.error.message).toMatch(/^Invalid JSON payload received\./);

    const unknown = await fails(s, FAST, { ...body('x'), imageConfig: { imageSize: '2K' } });
    expect(unknown.status).toBe(400);
    expect(unknown.error.message).toBe('Invalid JSON payload received. Unknown name "imageConfig": Cannot find field.');

    const nested = await fails(s, FAST, body('x', { generationConfig: { imageConfig: { imageSize: '1K', outputMimeType: 'image/png' } } }));
    expect(nested.error.message).toBe(
      `Invalid JSON payload received. Unknown name "outputMimeType" at 'generation_config.image_config': Cannot find field.`,
    );

    const noContents = await fails(s, FAST, { generationConfig: {} });
    expect(noContents.error.message).toContain('contents is not specified');

    const level = await fails(s, FAST, body('x', { generationConfig: { thinkingConfig: { thinkingLevel: 'LOW' } } }));
    expect(level.error.message).toBe('Thinking level LOW is not supported for this model. Please retry with other thinking level.');
    expect((await call(s, FAST, body('x', { generationConfig: { thinkingConfig: { thinkingLevel: 'High' } } }))).status).toBe(200);
  });
});

describe('simulator: quotas and peak hours', () => {
  it('answers 429 with the real body, a fractional RetryInfo delay and no Retry-After header', async () => {
    let clock = Date.parse('2026-03-02T08:00:00Z');
    const s = await sim({ timeScale: 0.01, quotas: { fast: 3 }, now: () => clock });
    for (let i = 0; i < 3; i++) expect((await generate(s, FAST, `burst ${i}`, { size: '512' })).status).toBe(200);

    clock += 37; // a minute is 600 ms at this time scale: one token per 200 ms
    const limited = await fails(s, FAST, body('one too many', { size: '512' }));
    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBeUndefined();
    expect(limited.error.code).toBe(429);
    expect(limited.error.status).toBe('RESOURCE_EXHAUSTED');
    expect(limited.error.message).toMatch(/^You exceeded your current quota, please check your plan and billing details\./);
    expect(limited.error.message).toContain(`limit: 3, model: ${FAST}`);
    expect(limited.error.message).toMatch(/Please retry in 163ms\.$/);
    expect(detail(limited.error, 'Help')).toBeDefined();
    expect(detail(limited.error, 'QuotaFailure')).toEqual({
      '@type': 'type.googleapis.com/google.rpc.QuotaFailure',
      violations: [
        {
          quotaMetric: 'generativelanguage.googleapis.com/generate_requests_per_model',
          quotaId: 'GenerateRequestsPerMinutePerProjectPerModel',
          quotaDimensions: { location: 'global', model: FAST },
          quotaValue: '3',
        },
      ],
    });
    expect(detail(limited.error, 'RetryInfo')).toEqual({ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '0.163000s' });

    // Another model id has its own bucket; the pro family has no quota at all.
    expect((await generate(s, 'gemini-3.1-flash-image-preview', 'other id', { size: '512' })).status).toBe(200);
    expect((await generate(s, PRO, 'pro is unlimited')).status).toBe(200);

    clock += 162; // still short of the advertised delay
    expect((await call(s, FAST, body('still early', { size: '512' }))).status).toBe(429);
    clock += 164;
    expect((await generate(s, FAST, 'after the delay', { size: '512' })).status).toBe(200);
    expect(s.stats()[FAST]).toMatchObject({ requests: 6, ok: 4, rateLimited: 2 });
  });

  it('lowers the fast family quota and doubles its latency at peak', async () => {
    const clock = Date.parse('2026-03-02T11:30:00Z');
    const peak = await sim({ timeScale: 0.001, seed: 5, quotas: { fast: 10, pro: 10 }, now: () => clock });
    const off = await sim({ timeScale: 0.001, seed: 5, quotas: { fast: 10, pro: 10 }, now: () => clock, peak: 'off' });
    peak.setPeak('auto');
    expect(peak.isPeak()).toBe(true); // 11:30 UTC is inside the default 10:00-14:00 window
    expect(off.isPeak()).toBe(false);

    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await call(peak, FAST, body(`peak ${i}`, { size: '512' }))).status);
    expect(statuses).toEqual([200, 200, 200, 429]); // 10 x 0.3 = 3 per minute
    const limited = await fails(peak, FAST, body('peak again', { size: '512' }));
    expect((detail(limited.error, 'QuotaFailure')!.violations as { quotaValue: string }[])[0]!.quotaValue).toBe('3');
    for (let i = 0; i < 4; i++) expect((await call(peak, PRO, body(`pro ${i}`))).status).toBe(200);

    // The same request under the same seed: twice the latency at peak for fast, unchanged for pro.
    await generate(peak, 'gemini-3.1-flash-image-preview', 'same job');
    await generate(off, 'gemini-3.1-flash-image-preview', 'same job');
    await generate(peak, 'gemini-3-pro-image-preview', 'same pro job');
    await generate(off, 'gemini-3-pro-image-preview', 'same pro job');
    const planned = (s: RunningSimulator, prompt: string): number => s.requests().find((e) => e.prompt === prompt)!.plannedMs!;
    expect(planned(peak, 'same job')).toBeCloseTo(2 * planned(off, 'same job'), 6);
    expect(planned(peak, 'same pro job')).toBeCloseTo(planned(off, 'same pro job'), 6);

    peak.setPeak('off');
    expect(peak.isPeak()).toBe(false);
    const res = await request(`${peak.url}/_sim/peak`, { method: 'POST', body: JSON.stringify({ peak: 'on' }) });
    expect(await res.body.json()).toEqual({ peak: 'on', active: true });
  });

  it('follows the configured peak windows and time zone in auto mode', async () => {
    let clock = Date.parse('2026-03-02T08:30:00Z');
    const s = await sim({ peak: 'auto', now: () => clock, timeZone: 'Europe/Paris', peakWindows: [{ startMinute: 540, endMinute: 600, label: '09:00-10:00' }] });
    expect(s.isPeak()).toBe(true); // 09:30 in Paris
    clock = Date.parse('2026-03-02T09:30:00Z');
    expect(s.isPeak()).toBe(false);
  });
});

describe('simulator: fault markers', () => {
  it('produces each fault in the real shape', async () => {
    const s = await sim({ timeScale: 0.001 });
    const raw = (fault: string, size = '1K') => call(s, FAST, body(`a fox [sim:${fault}]`, { size }));

    const perMinute = JSON.parse((await raw('429')).text) as ErrorBody;
    expect(perMinute.error.code).toBe(429);
    expect((detail(perMinute.error, 'QuotaFailure')!.violations as { quotaId: string }[])[0]!.quotaId).toBe('GenerateRequestsPerMinutePerProjectPerModel');
    expect(detail(perMinute.error, 'RetryInfo')!.retryDelay).toMatch(/^\d+(\.\d{6})?s$/);

    const day = JSON.parse((await raw('429-day')).text) as ErrorBody;
    expect((detail(day.error, 'QuotaFailure')!.violations as { quotaId: string }[])[0]!.quotaId).toBe('GenerateRequestsPerDayPerProjectPerModel');
    expect(detail(day.error, 'RetryInfo')).toBeDefined();

    const bare = await raw('429-bare');
    expect(bare.status).toBe(429);
    expect(JSON.parse(bare.text)).toEqual({ error: { code: 429, message: 'Resource has been exhausted (e.g. check quota).', status: 'RESOURCE_EXHAUSTED' } });

    const internal = await raw('500');
    expect(internal.status).toBe(500);
    expect((JSON.parse(internal.text) as ErrorBody).error.status).toBe('INTERNAL');

    const unavailable = await raw('503');
    expect(unavailable.status).toBe(503);
    expect(JSON.parse(unavailable.text)).toEqual({ error: { code: 503, message: 'The model is overloaded. Please try again later.', status: 'UNAVAILABLE' } });

    const truncated = await raw('truncate', '512');
    expect(truncated.status).toBe(200);
    expect(truncated.text.startsWith('{"candidates":[')).toBe(true);
    expect(() => JSON.parse(truncated.text)).toThrow();

    await expect(raw('reset', '512')).rejects.toThrow();

    const safety = JSON.parse((await raw('image-safety')).text) as GenResponse;
    expect(safety.candidates![0]!.finishReason).toBe('IMAGE_SAFETY');
    expect(safety.candidates![0]!.content.parts!.every((p) => p.inlineData === undefined && typeof p.text === 'string')).toBe(true);
    expect(safety.candidates![0]!.content.parts!.at(-1)!.text).toContain("I can't create that.");

    const noImage = JSON.parse((await raw('no-image')).text) as GenResponse;
    expect(noImage.candidates).toEqual([{ content: {}, finishReason: 'NO_IMAGE', index: 0 }]);
    expect(noImage.usageMetadata.candidatesTokenCount).toBeUndefined();
    expect(noImage.usageMetadata.totalTokenCount).toBe(noImage.usageMetadata.promptTokenCount);

    const other = JSON.parse((await raw('image-other')).text) as GenResponse;
    expect(other.candidates![0]).toMatchObject({ content: {}, finishReason: 'IMAGE_OTHER', index: 0 });
    expect(other.candidates![0]!.finishMessage).toContain('You will not be charged for this request.');

    const blocked = JSON.parse((await raw('block')).text) as GenResponse;
    expect(blocked.candidates).toBeUndefined();
    expect(blocked.promptFeedback).toEqual({ blockReason: 'PROHIBITED_CONTENT' });
    expect(blocked.modelVersion).toBe(FAST);

    const degraded = JSON.parse((await raw('degrade', '512')).text) as GenResponse;
    expect(degraded.modelVersion).toBe('gemini-2.5-flash-image');
    expect(finalImages(degraded)).toHaveLength(1);

    const two = JSON.parse((await raw('two-images', '1K')).text) as GenResponse;
    const twoImages = finalImages(two);
    expect(twoImages).toHaveLength(2);
    expect(await decode(twoImages[0]!)).toMatchObject({ width: 512, height: 512 });
    expect(await decode(twoImages[1]!)).toMatchObject({ width: 1024, height: 1024 });
    expect(twoImages.every((p) => typeof p.thoughtSignature === 'string')).toBe(true);
    const twoAt2K = finalImages(JSON.parse((await raw('two-images', '2K')).text) as GenResponse);
    expect(await decode(twoAt2K[0]!)).toMatchObject({ width: 1024, height: 1024 });
    expect(await decode(twoAt2K[1]!)).toMatchObject({ width: 2048, height: 2048 });

    const textOnly = JSON.parse((await raw('text-only')).text) as GenResponse;
    expect(textOnly.candidates![0]!.finishReason).toBe('STOP');
    expect(textOnly.candidates![0]!.content.parts).toHaveLength(1);
    expect(finalImages(textOnly)).toHaveLength(0);

    expect(s.stats()[FAST]!.faults).toEqual({
      '429': 1, '429-day': 1, '429-bare': 1, '500': 1, '503': 1, truncate: 1, reset: 1, 'image-safety': 1,
      'no-image': 1, 'image-other': 1, block: 1, degrade: 1, 'two-images': 2, 'text-only': 1,
    });
    expect(s.stats()[FAST]).toMatchObject({ ok: 0, rateLimited: 3, aborted: 0 });
  });

  it('fires a *N marker only for the first N requests with that exact prompt', async () => {
    const s = await sim();
    const prompt = 'flaky job [sim:503*1]';
    expect((await call(s, FAST, body(prompt))).status).toBe(503);
    expect((await call(s, FAST, body(prompt))).status).toBe(200);
    expect((await call(s, FAST, body(prompt))).status).toBe(200);
    // Another prompt with the same marker has its own count.
    expect((await call(s, FAST, body('other job [sim:503*1]'))).status).toBe(503);
    // Markers in order: 503 once, then 429 once, then success.
    const chain = 'chained [sim:503*1][sim:429*1]';
    expect([(await call(s, FAST, body(chain))).status, (await call(s, FAST, body(chain))).status, (await call(s, FAST, body(chain))).status]).toEqual([
      503, 429, 200,
    ]);
  });

  it('limits a marker to a family or model id, and combines the filter with a count', async () => {
    const s = await sim();
    expect((await call(s, PRO, body('only fast [sim:503@fast]'))).status).toBe(200);
    expect((await call(s, FAST, body('only fast [sim:503@fast]'))).status).toBe(503);
    expect((await call(s, FAST, body('only fast [sim:503@fast]'))).status).toBe(503);
    expect((await call(s, 'gemini-3.1-flash-image-preview', body(`one id [sim:500@${FAST}]`))).status).toBe(200);
    expect((await call(s, FAST, body(`one id [sim:500@${FAST}]`))).status).toBe(500);

    const combined = 'fast twice [sim:429@fast*2]';
    const statuses = [];
    statuses.push((await call(s, PRO, body(combined))).status); // does not use up the count
    for (let i = 0; i < 3; i++) statuses.push((await call(s, FAST, body(combined))).status);
    expect(statuses).toEqual([200, 429, 429, 200]);
  });

  it('rejects an unknown fault name instead of ignoring a typo', async () => {
    const s = await sim();
    const typo = await fails(s, FAST, body('oops [sim:530]'));
    expect(typo.status).toBe(400);
    expect(typo.error.message).toContain('unknown fault "530"');
  });

  it('injects faults at the configured rates, reproducibly', async () => {
    const count = async (seed: number): Promise<number[]> => {
      const s = await sim({ seed, faultRates: { '503': 0.5 } });
      const out: number[] = [];
      for (let i = 0; i < 40; i++) out.push((await call(s, FAST, body(`rated ${i}`, { size: '512' }))).status);
      return out;
    };
    const a = await count(3);
    expect(await count(3)).toEqual(a);
    const failures = a.filter((st) => st === 503).length;
    expect(failures).toBeGreaterThan(8);
    expect(failures).toBeLessThan(32);
  });
});

describe('simulator: aborts, stats and the request log', () => {
  it('counts a hanging request as aborted when the client gives up', async () => {
    const s = await sim();
    const controller = new AbortController();
    const pending = call(s, FAST, body('never answers [sim:hang]'), { signal: controller.signal });
    await waitFor('the hang to be in flight', () => s.stats()[FAST]?.inFlight === 1);
    controller.abort();
    await expect(pending).rejects.toThrow();
    await waitFor('the abort to be counted', () => s.stats()[FAST]?.aborted === 1);
    expect(s.stats()[FAST]).toMatchObject({ inFlight: 0, ok: 0, faults: { hang: 1 } });
    expect(s.requests().at(-1)).toMatchObject({ fault: 'hang', aborted: true, status: null });
  });

  it('answers 504 when a hang reaches hangMaxMs, and close() ends hanging requests', async () => {
    const s = await sim({ hangMaxMs: 50 });
    const timedOut = await fails(s, FAST, body('short hang [sim:hang*1]'));
    expect(timedOut.status).toBe(504);
    expect(timedOut.error.status).toBe('DEADLINE_EXCEEDED');

    const s2 = await startSimulator({ timeScale: 0, peak: 'off' });
    const pending = call(s2, FAST, body('hang until close [sim:hang]'));
    await waitFor('the hang to be in flight', () => s2.stats()[FAST]?.inFlight === 1);
    await s2.close();
    await expect(pending).rejects.toThrow();
  });

  it('counts an abort during the generation latency', async () => {
    const s = await sim({ timeScale: 0.2 }); // a 1K call takes at least a second
    const controller = new AbortController();
    const pending = call(s, PRO, body('slow one'), { signal: controller.signal });
    await waitFor('the call to be in flight', () => s.stats()[PRO]?.inFlight === 1);
    controller.abort();
    await expect(pending).rejects.toThrow();
    await waitFor('the abort to be counted', () => s.stats()[PRO]?.aborted === 1);
    expect(s.stats()[PRO]!.ok).toBe(0);
  });

  it('exposes stats and the request log over HTTP, filters by prompt and resets', async () => {
    const s = await sim();
    await generate(s, FAST, 'count me');
    await generate(s, FAST, 'count me');
    await call(s, FAST, body('count me [sim:503*1]'));
    await call(s, PRO, body('pro one', { size: '512' }));

    const stats = await getJson<SimulatorStats>(`${s.url}/_sim/stats`);
    expect(stats[FAST]).toEqual({ requests: 3, ok: 2, rateLimited: 0, rejected: 0, faults: { '503': 1 }, inFlight: 0, aborted: 0 });
    expect(stats[PRO]).toMatchObject({ requests: 1, rejected: 1 });

    const mine = await getJson<SimRequestLog[]>(`${s.url}/_sim/requests?prompt=${encodeURIComponent('count me')}`);
    expect(mine).toHaveLength(2);
    expect(mine[0]).toMatchObject({ model: FAST, family: 'fast', prompt: 'count me', promptHash: promptHash('count me'), size: '1K', aspectRatio: '1:1', status: 200 });
    const all = await getJson<SimRequestLog[]>(`${s.url}/_sim/requests`);
    expect(all.map((e) => e.status)).toEqual([200, 200, 503, 400]);
    expect((await getJson<SimRequestLog[]>(`${s.url}/_sim/requests?model=${PRO}`)).map((e) => e.prompt)).toEqual(['pro one']);

    const res = await request(`${s.url}/_sim/reset`, { method: 'POST' });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(await getJson<SimulatorStats>(`${s.url}/_sim/stats`)).toEqual({});
    expect(s.requests()).toEqual([]);
    // Marker counters start over too.
    expect((await call(s, FAST, body('count me [sim:503*1]'))).status).toBe(503);
  });

  it('keeps the request log bounded', async () => {
    const s = await sim({ requestLogSize: 3 });
    for (let i = 0; i < 5; i++) await call(s, FAST, body(`log ${i}`, { size: '512' }));
    expect(s.requests().map((e) => e.prompt)).toEqual(['log 2', 'log 3', 'log 4']);
  });

  it('lists the known models like ListModels', async () => {
    const s = await sim();
    const res = await request(`${s.url}/v1beta/models`, { headers: { 'x-goog-api-key': KEY } });
    const list = (await res.body.json()) as { models: { name: string; supportedGenerationMethods: string[] }[] };
    expect(list.models.map((m) => m.name)).toEqual([
      'models/gemini-3.1-flash-image', 'models/gemini-3.1-flash-image-preview', 'models/gemini-3-pro-image', 'models/gemini-3-pro-image-preview',
    ]);
    expect(list.models[0]!.supportedGenerationMethods).toContain('generateContent');
  });
});

describe('simulator: seeded randomness and latency', () => {
  it('gives the same ids, signatures and latencies for the same seed, whatever the arrival order', async () => {
    const run = async (seed: number, prompts: string[]): Promise<Map<string, { id: string; sig: string; planned: number }>> => {
      const s = await sim({ seed, timeScale: 0.0001 });
      const out = new Map<string, { id: string; sig: string; planned: number }>();
      for (const p of prompts) {
        const r = await generate(s, FAST, p, { size: '512' });
        out.set(p, { id: r.json.responseId, sig: finalImages(r.json)[0]!.thoughtSignature!, planned: s.requests().at(-1)!.plannedMs! });
      }
      return out;
    };
    const a = await run(42, ['alpha', 'beta', 'gamma']);
    const b = await run(42, ['gamma', 'alpha', 'beta']);
    const c = await run(43, ['alpha', 'beta', 'gamma']);
    for (const p of ['alpha', 'beta', 'gamma']) {
      expect(b.get(p)).toEqual(a.get(p));
      expect(c.get(p)!.id).not.toBe(a.get(p)!.id);
    }
    // Ids differ between prompts and between repeats of one prompt.
    expect(new Set([...a.values()].map((v) => v.id)).size).toBe(3);
    const s = await sim({ seed: 42 });
    const first = await generate(s, FAST, 'again', { size: '512' });
    const second = await generate(s, FAST, 'again', { size: '512' });
    expect(second.json.responseId).not.toBe(first.json.responseId);
  });

  it('scales the measured latency table by timeScale', async () => {
    const s = await sim({ timeScale: 0.02 });
    // Render the image first so the timing below is latency, not encoding.
    await sim().then((warm) => generate(warm, FAST, 'warm', { size: '1K', ratio: '5:4' }));
    const r = await generate(s, FAST, 'timed', { size: '1K', ratio: '5:4' });
    expect(r.status).toBe(200);
    const planned = s.requests().at(-1)!.plannedMs!;
    expect(planned).toBeGreaterThanOrEqual(5_000 * 0.02);
    expect(planned).toBeLessThanOrEqual(10_000 * 0.02);
    expect(r.ms).toBeGreaterThanOrEqual(planned - 5);
    expect(r.ms).toBeLessThan(planned + 2_000);

    // Pro 2K draws from its own, slower range (20-35 s).
    const planOnly = await sim({ timeScale: 0.0001 });
    await generate(planOnly, PRO, 'pro 4k', { size: '2K' });
    expect(planOnly.requests().at(-1)!.plannedMs!).toBeGreaterThanOrEqual(20_000 * 0.0001);
    expect(planOnly.requests().at(-1)!.plannedMs!).toBeLessThanOrEqual(35_000 * 0.0001);
  });
});
