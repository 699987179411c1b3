/**
 * What pixelmill knows about the two model families, independent of the concrete model ids (which
 * come from configuration: MODEL_FAST and MODEL_PRO, because Google renames and retires ids).
 *
 * Facts from the official image-generation guide as summarised in ../shared/reference/gemini-image-api.md
 * §1.2 and §4.1 (pixel tables, capabilities, output tokens per image).
 */

export const MODEL_FAMILIES = ['fast', 'pro'] as const;
/** `fast` = Nano Banana 2 (Gemini 3.1 Flash Image), `pro` = Nano Banana Pro (Gemini 3 Pro Image). */
export type ModelFamily = (typeof MODEL_FAMILIES)[number];

export const FAMILY_LABEL: Record<ModelFamily, string> = {
  fast: 'Nano Banana 2',
  pro: 'Nano Banana Pro',
};

export const IMAGE_SIZES = ['512', '1K', '2K', '4K'] as const;
export type ImageSize = (typeof IMAGE_SIZES)[number];

export const ASPECT_RATIOS = [
  '1:1', '1:4', '4:1', '1:8', '8:1', '2:3', '3:2', '3:4', '4:3', '4:5', '5:4', '9:16', '16:9', '21:9',
] as const;
export type AspectRatio = (typeof ASPECT_RATIOS)[number];

/**
 * Measured generation latency (seconds, off-peak; Nano Banana 2 takes about twice as long at peak),
 * from the seeds' "Actual" table (../shared/seeds): the simulator draws from these ranges, and a
 * worker uses their upper ends as p95 until its health window has measured figures. Pro has no 512
 * tier; the seeds still measured 8-12 s for its smallest output.
 */
export const LATENCY_SECONDS: Record<ModelFamily, Record<ImageSize, readonly [number, number]>> = {
  fast: { '512': [3, 5], '1K': [5, 10], '2K': [10, 25], '4K': [20, 60] },
  pro: { '512': [8, 12], '1K': [10, 20], '2K': [20, 35], '4K': [30, 60] },
};

/** Ratios only Nano Banana 2 renders. */
export const FAST_ONLY_RATIOS: readonly AspectRatio[] = ['1:4', '4:1', '1:8', '8:1'];
/** Sizes only Nano Banana 2 renders. */
export const FAST_ONLY_SIZES: readonly ImageSize[] = ['512'];

export interface FamilyCapabilities {
  readonly sizes: readonly ImageSize[];
  readonly aspectRatios: readonly AspectRatio[];
  /** Output IMAGE tokens per generated image, by size (pricing page; the response's usage is ground truth). */
  readonly imageTokens: Partial<Record<ImageSize, number>>;
  /** A `modelVersion` that does not start with one of these means the answer came from another model. */
  readonly versionPrefixes: readonly string[];
  readonly maxInputImages: number;
}

export const CAPABILITIES: Record<ModelFamily, FamilyCapabilities> = {
  fast: {
    sizes: IMAGE_SIZES,
    aspectRatios: ASPECT_RATIOS,
    imageTokens: { '512': 747, '1K': 1120, '2K': 1680, '4K': 2520 },
    versionPrefixes: ['gemini-3.1-flash-image'],
    maxInputImages: 14,
  },
  pro: {
    sizes: ['1K', '2K', '4K'],
    aspectRatios: ASPECT_RATIOS.filter((r) => !FAST_ONLY_RATIOS.includes(r)),
    imageTokens: { '1K': 1120, '2K': 1120, '4K': 2000 },
    versionPrefixes: ['gemini-3-pro-image'],
    maxInputImages: 14,
  },
};

export function supports(family: ModelFamily, size: ImageSize, aspectRatio: AspectRatio): boolean {
  const c = CAPABILITIES[family];
  return c.sizes.includes(size) && c.aspectRatios.includes(aspectRatio);
}

/** Pixel size at 1K for each ratio (identical for both families on the ratios they share). */
const PIXELS_1K: Record<AspectRatio, readonly [number, number]> = {
  '1:1': [1024, 1024],
  '1:4': [512, 2048],
  '4:1': [2048, 512],
  '1:8': [384, 3072],
  '8:1': [3072, 384],
  '2:3': [848, 1264],
  '3:2': [1264, 848],
  '3:4': [896, 1200],
  '4:3': [1200, 896],
  '4:5': [928, 1152],
  '5:4': [1152, 928],
  '9:16': [768, 1376],
  '16:9': [1376, 768],
  '21:9': [1584, 672],
};

const SCALE: Record<ImageSize, number> = { '512': 0.5, '1K': 1, '2K': 2, '4K': 4 };

/** The exact pixel size the models render for a size and ratio (512 = half of 1K, 2K double, 4K four times). */
export function pixelSize(size: ImageSize, aspectRatio: AspectRatio): { width: number; height: number } {
  const [w, h] = PIXELS_1K[aspectRatio];
  return { width: Math.round(w * SCALE[size]), height: Math.round(h * SCALE[size]) };
}
