import { describe, expect, it } from 'vitest';
import { buildGenerateContentBody } from '../../src/providers/gemini/request-body.js';

describe('buildGenerateContentBody', () => {
  it('puts the prompt first, then input images as base64 inlineData, and asks for TEXT and IMAGE at the size and ratio', () => {
    const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]);
    const jpeg = Buffer.from([0xff, 0xd8, 0xff, 9, 8, 7]);
    const body = buildGenerateContentBody({
      prompt: 'Put the cat into a kitchen',
      size: '2K',
      aspectRatio: '16:9',
      inputImages: [{ mimeType: 'image/png', data: png }, { mimeType: 'image/jpeg', data: jpeg }],
    });
    expect(body).toEqual({
      contents: [{
        role: 'user',
        parts: [
          { text: 'Put the cat into a kitchen' },
          { inlineData: { mimeType: 'image/png', data: png.toString('base64') } },
          { inlineData: { mimeType: 'image/jpeg', data: jpeg.toString('base64') } },
        ],
      }],
      generationConfig: { responseModalities: ['TEXT', 'IMAGE'], imageConfig: { aspectRatio: '16:9', imageSize: '2K' } },
    });
  });

  it('sends the 512 tier as the string "512" and a text-only prompt as a single part', () => {
    const body = buildGenerateContentBody({ prompt: 'a lighthouse', size: '512', aspectRatio: '1:8', inputImages: [] });
    expect(body.contents[0]!.parts).toEqual([{ text: 'a lighthouse' }]);
    expect(body.generationConfig.imageConfig).toEqual({ aspectRatio: '1:8', imageSize: '512' });
  });
});
