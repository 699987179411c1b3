import { beforeAll, describe, expect, it } from 'vitest';
import { isPixelmillError, type PixelmillError } from '../../src/errors/catalogue.js';
import { pixelSize } from '../../src/models/catalogue.js';
import {
  BLOCKING_FINISH_REASONS, extractUsage, parseGenerateContentResponse,
} from '../../src/providers/gemini/parse-response.js';
import { fixture, imageResponse, makeImage } from '../fixtures/gemini/bodies.js';

const SIZE_1K = pixelSize('1K', '1:1');
const SIZE_2K = pixelSize('2K', '1:1');
const REQUEST_2K = { ...SIZE_2K, modelId: 'gemini-3.1-flash-image' };

function parseError(body: unknown, requested = REQUEST_2K): PixelmillError {
  try {
    parseGenerateContentResponse(body, requested);
  } catch (err) {
    if (isPixelmillError(err)) return err;
    throw err;
  }
  throw new Error('expected parseGenerateContentResponse to throw');
}

let jpeg1k: Buffer;
let jpeg2k: Buffer;
let png1k: Buffer;
let png2k: Buffer;
let webp2k: Buffer;

beforeAll(async () => {
  [jpeg1k, jpeg2k, png1k, png2k, webp2k] = await Promise.all([
    makeImage(SIZE_1K.width, SIZE_1K.height, 'jpeg', 10),
    makeImage(SIZE_2K.width, SIZE_2K.height, 'jpeg', 200),
    makeImage(SIZE_1K.width, SIZE_1K.height, 'png', 30),
    makeImage(SIZE_2K.width, SIZE_2K.height, 'png', 60),
    makeImage(SIZE_2K.width, SIZE_2K.height, 'webp', 90),
  ]);
});

describe('parseGenerateContentResponse: choosing the image', () => {
  it('ignores thought text and thought images and returns the final image with its facts', () => {
    const body = imageResponse([
      { text: 'Planning the composition', thought: true },
      { image: png2k, mimeType: 'image/png', thought: true },
      { text: 'Here is your image' },
      { image: jpeg2k, mimeType: 'image/jpeg' },
    ]);
    const parsed = parseGenerateContentResponse(body, REQUEST_2K);
    expect(parsed.bytes.equals(jpeg2k)).toBe(true);
    expect(parsed).toMatchObject({
      mimeType: 'image/jpeg', declaredMimeType: 'image/jpeg', width: 2048, height: 2048,
      modelVersion: 'gemini-3.1-flash-image', responseId: 'dTOras2iGqLc-sAPiO2BiAw', finishReason: 'STOP',
      imageParts: 1, sizeMismatch: false,
    });
  });

  it('never takes a thought image, even when only the thought image has the requested size', () => {
    const body = imageResponse([
      { image: jpeg2k, mimeType: 'image/jpeg', thought: true },
      { image: jpeg1k, mimeType: 'image/jpeg' },
    ]);
    const parsed = parseGenerateContentResponse(body, REQUEST_2K);
    expect(parsed.bytes.equals(jpeg1k)).toBe(true);
    expect(parsed.imageParts).toBe(1);
    expect(parsed.sizeMismatch).toBe(true);
  });

  it('takes the requested 2K image when a 1K default comes first', () => {
    const body = imageResponse([
      { image: jpeg1k, mimeType: 'image/jpeg' },
      { image: jpeg2k, mimeType: 'image/jpeg' },
    ]);
    const parsed = parseGenerateContentResponse(body, REQUEST_2K);
    expect(parsed.bytes.equals(jpeg2k)).toBe(true);
    expect(parsed.imageParts).toBe(2);
    expect(parsed.sizeMismatch).toBe(false);
  });

  it('takes the requested 2K image when the 1K default comes last', () => {
    const body = imageResponse([
      { image: jpeg2k, mimeType: 'image/jpeg' },
      { text: 'And a smaller one' },
      { image: jpeg1k, mimeType: 'image/jpeg' },
    ]);
    const parsed = parseGenerateContentResponse(body, REQUEST_2K);
    expect(parsed.bytes.equals(jpeg2k)).toBe(true);
    expect(parsed).toMatchObject({ width: 2048, height: 2048, imageParts: 2, sizeMismatch: false });
  });

  it('takes the last image and flags sizeMismatch when none has the requested size', () => {
    const body = imageResponse([
      { image: png1k, mimeType: 'image/png' },
      { image: jpeg1k, mimeType: 'image/jpeg' },
    ]);
    const parsed = parseGenerateContentResponse(body, REQUEST_2K);
    expect(parsed.bytes.equals(jpeg1k)).toBe(true);
    expect(parsed).toMatchObject({ width: 1024, height: 1024, imageParts: 2, sizeMismatch: true });
  });

  it('reads PNG and WebP as well as JPEG', () => {
    const png = parseGenerateContentResponse(imageResponse([{ image: png2k, mimeType: 'image/png' }]), REQUEST_2K);
    expect(png.mimeType).toBe('image/png');
    expect(png.bytes.equals(png2k)).toBe(true);
    const webp = parseGenerateContentResponse(imageResponse([{ image: webp2k, mimeType: 'image/webp' }]), REQUEST_2K);
    expect(webp.mimeType).toBe('image/webp');
    expect(webp).toMatchObject({ width: 2048, height: 2048 });
  });

  it('trusts the bytes over a wrong inlineData.mimeType and reports what was declared', () => {
    const parsed = parseGenerateContentResponse(imageResponse([{ image: jpeg2k, mimeType: 'image/png' }]), REQUEST_2K);
    expect(parsed.mimeType).toBe('image/jpeg');
    expect(parsed.declaredMimeType).toBe('image/png');
  });

  it('accepts snake_case inline_data as proto-JSON allows', () => {
    const body = {
      candidates: [{ content: { parts: [{ inline_data: { mime_type: 'image/png', data: png2k.toString('base64') } }] }, finishReason: 'STOP' }],
    };
    const parsed = parseGenerateContentResponse(body, REQUEST_2K);
    expect(parsed.mimeType).toBe('image/png');
    expect(parsed.declaredMimeType).toBe('image/png');
  });
});

describe('parseGenerateContentResponse: usage', () => {
  it('keeps IMAGE tokens apart from candidatesTokenCount (they differ in live answers)', () => {
    const parsed = parseGenerateContentResponse(imageResponse([{ image: jpeg2k, mimeType: 'image/jpeg' }]), REQUEST_2K);
    expect(parsed.usage).toEqual({ promptTokens: 10, candidatesTokens: 1392, imageTokens: 1120, thoughtsTokens: 244, totalTokens: 1646 });
  });

  it('sums IMAGE entries only and derives a missing total', () => {
    expect(extractUsage({
      promptTokenCount: 8, candidatesTokenCount: 1219, thoughtsTokenCount: 244,
      candidatesTokensDetails: [{ modality: 'TEXT', tokenCount: 99 }, { modality: 'IMAGE', tokenCount: 1120 }],
    })).toEqual({ promptTokens: 8, candidatesTokens: 1219, imageTokens: 1120, thoughtsTokens: 244, totalTokens: 1471 });
  });

  it('is null without usageMetadata, and a success then reports zeros', () => {
    expect(extractUsage(undefined)).toBeNull();
    const body = imageResponse([{ image: jpeg2k, mimeType: 'image/jpeg' }]);
    delete body.usageMetadata;
    expect(parseGenerateContentResponse(body, REQUEST_2K).usage).toEqual({
      promptTokens: 0, candidatesTokens: 0, imageTokens: 0, thoughtsTokens: 0, totalTokens: 0,
    });
  });
});

describe('parseGenerateContentResponse: answers without an image', () => {
  it('NO_IMAGE with content {} → NO_IMAGE with finishReason, usage and modelVersion in details', () => {
    const err = parseError(fixture('200-no-image.json'));
    expect(err.code).toBe('NO_IMAGE');
    expect(err.message).toBe('gemini-3.1-flash-image-preview finished with NO_IMAGE and sent no image');
    expect(err.details).toMatchObject({
      finishReason: 'NO_IMAGE',
      modelVersion: 'gemini-3.1-flash-image-preview',
      responseId: 'kX7xaPm2HsLc-sAP0cSRmAk',
      usage: { promptTokens: 9, candidatesTokens: 0, imageTokens: 0, thoughtsTokens: 0, totalTokens: 9 },
    });
    expect(err.details).not.toHaveProperty('blockReason');
  });

  it('IMAGE_OTHER → NO_IMAGE quoting the finishMessage', () => {
    const err = parseError(fixture('200-image-other.json'));
    expect(err.code).toBe('NO_IMAGE');
    expect(err.message).toMatch(/^gemini-3\.1-flash-image finished with IMAGE_OTHER and sent no image: "Unable to show the generated image\..*You will not be charged/);
    expect(err.details.finishReason).toBe('IMAGE_OTHER');
  });

  it('IMAGE_SAFETY with a text refusal → CONTENT_BLOCKED quoting the refusal', () => {
    const err = parseError(fixture('200-image-safety-text.json'));
    expect(err.code).toBe('CONTENT_BLOCKED');
    expect(err.message).toBe('gemini-3.1-flash-image finished with IMAGE_SAFETY: "I can\'t create that."');
    expect(err.details).toMatchObject({ finishReason: 'IMAGE_SAFETY', usage: { promptTokens: 12, candidatesTokens: 6 } });
  });

  it('a blocked prompt without candidates → CONTENT_BLOCKED with blockReason and prompt usage', () => {
    const err = parseError(fixture('200-prompt-block.json'));
    expect(err.code).toBe('CONTENT_BLOCKED');
    expect(err.message).toBe('gemini-3.1-flash-image-preview blocked the prompt (promptFeedback.blockReason PROHIBITED_CONTENT)');
    expect(err.details).toMatchObject({ blockReason: 'PROHIBITED_CONTENT', usage: { promptTokens: 263, totalTokens: 263 } });
  });

  it('STOP with text only → NO_IMAGE quoting the text, not the thoughts', () => {
    const err = parseError(fixture('200-text-only-stop.json'));
    expect(err.code).toBe('NO_IMAGE');
    expect(err.message).toBe('gemini-3-pro-image finished with STOP and sent no image, only text: "Here is a description of a lighthouse at dusk: a white tower against an orange sky."');
    expect(err.message).not.toContain('Sketching');
    expect(err.details).toMatchObject({ finishReason: 'STOP', usage: { thoughtsTokens: 120 } });
  });

  it('only thought images → NO_IMAGE', () => {
    const err = parseError(imageResponse([{ image: jpeg2k, mimeType: 'image/jpeg', thought: true }]));
    expect(err.code).toBe('NO_IMAGE');
  });

  it.each([...BLOCKING_FINISH_REASONS])('finishReason %s → CONTENT_BLOCKED', (reason) => {
    const err = parseError({ candidates: [{ content: {}, finishReason: reason }], modelVersion: 'gemini-3-pro-image' });
    expect(err.code).toBe('CONTENT_BLOCKED');
    expect(err.message).toBe(`gemini-3-pro-image finished with ${reason}`);
  });

  it('a safety finishReason wins over an image in the same answer', () => {
    const err = parseError(imageResponse([{ image: jpeg2k, mimeType: 'image/jpeg' }], { finishReason: 'IMAGE_SAFETY' }));
    expect(err.code).toBe('CONTENT_BLOCKED');
  });

  it('names the requested model when the body has no modelVersion', () => {
    const err = parseError({ candidates: [{ content: {}, finishReason: 'NO_IMAGE' }] });
    expect(err.message).toBe('gemini-3.1-flash-image finished with NO_IMAGE and sent no image');
    expect(err.details).toEqual({ finishReason: 'NO_IMAGE' });
  });
});

describe('parseGenerateContentResponse: unreadable answers → BAD_RESPONSE', () => {
  it('base64 that is not base64', () => {
    const body = imageResponse([{ image: jpeg2k, mimeType: 'image/jpeg' }]);
    (body.candidates as { content: { parts: { inlineData: { data: string } }[] } }[])[0]!.content.parts[0]!.inlineData.data = 'not*base64!';
    const err = parseError(body);
    expect(err.code).toBe('BAD_RESPONSE');
    expect(err.message).toContain('not base64');
    expect(err.details).toMatchObject({ finishReason: 'STOP', modelVersion: 'gemini-3.1-flash-image' });
  });

  it('valid base64 of bytes that are no image', () => {
    const err = parseError(imageResponse([{ image: Buffer.from('this is plain text, not a picture'), mimeType: 'image/jpeg' }]));
    expect(err.code).toBe('BAD_RESPONSE');
    expect(err.message).toMatch(/declared image\/jpeg.*not a readable image/);
  });

  it('an image type we do not deliver (GIF)', () => {
    const gif = Buffer.from('474946383961010001000000002c00000000010001000002003b', 'hex');
    const err = parseError(imageResponse([{ image: gif, mimeType: 'image/gif' }]));
    expect(err.code).toBe('BAD_RESPONSE');
    expect(err.message).toContain('unsupported type gif');
  });

  it('empty image data', () => {
    const err = parseError(imageResponse([{ image: Buffer.alloc(0), mimeType: 'image/png' }]));
    expect(err.code).toBe('BAD_RESPONSE');
  });

  it.each([
    ['null', null],
    ['an array', [{ candidates: [] }]],
    ['a string', 'ok'],
    ['an empty object', {}],
    ['candidates not an array', { candidates: { content: {} } }],
    ['an empty candidates array', { candidates: [] }],
    ['a candidate that is not an object', { candidates: ['x'] }],
    ['content that is not an object', { candidates: [{ content: 'x', finishReason: 'STOP' }] }],
    ['parts that is not an array', { candidates: [{ content: { parts: {} }, finishReason: 'STOP' }] }],
    ['a part that is not an object', { candidates: [{ content: { parts: [7] }, finishReason: 'STOP' }] }],
    ['inlineData without data', { candidates: [{ content: { parts: [{ inlineData: { mimeType: 'image/png' } }] } }] }],
    ['an error object in a 200', { error: { code: 500, message: 'internal' } }],
  ])('%s', (_label, body) => {
    expect(parseError(body).code).toBe('BAD_RESPONSE');
  });
});
