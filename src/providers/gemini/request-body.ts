/**
 * The generateContent request body (wire format: shared/reference/gemini-image-api.md §1.2).
 *
 * The body may hold input images as base64, so it is never logged and never stored; callers build it,
 * send it and drop it.
 */
import type { GenerateImageRequest } from './types.js';

export interface GenerateContentBody {
  contents: { role: 'user'; parts: ({ text: string } | { inlineData: { mimeType: string; data: string } })[] }[];
  generationConfig: {
    /** TEXT as well as IMAGE: the image models think and may comment; IMAGE-only is allowed but gains nothing. */
    responseModalities: ['TEXT', 'IMAGE'];
    imageConfig: { aspectRatio: string; imageSize: string };
  };
}

export type BodyInput = Pick<GenerateImageRequest, 'prompt' | 'size' | 'aspectRatio' | 'inputImages'>;

export function buildGenerateContentBody(req: BodyInput): GenerateContentBody {
  return {
    contents: [
      {
        role: 'user',
        parts: [
          { text: req.prompt },
          ...req.inputImages.map((img) => ({ inlineData: { mimeType: img.mimeType, data: img.data.toString('base64') } })),
        ],
      },
    ],
    generationConfig: {
      responseModalities: ['TEXT', 'IMAGE'],
      // imageSize must keep its uppercase K ("1K"); the catalogue's values are already the wire values.
      imageConfig: { aspectRatio: req.aspectRatio, imageSize: req.size },
    },
  };
}
