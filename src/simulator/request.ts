/**
 * Reads a generateContent body the way the real endpoint does: proto-JSON (camelCase or snake_case
 * field names), unknown field names rejected, wrong types and enum values rejected, then the image
 * options checked against the model family (src/models/catalogue.ts `supports()`).
 */
import {
  ASPECT_RATIOS,
  CAPABILITIES,
  IMAGE_SIZES,
  type AspectRatio,
  type ImageSize,
  type ModelFamily,
} from '../models/catalogue.js';
import { badRequest, invalidArgument, type SimError } from './google-errors.js';

export interface ParsedRequest {
  /** All text parts of all contents, joined by newlines (fault markers are read from this). */
  readonly prompt: string;
  readonly inputImages: number;
  readonly size: ImageSize;
  readonly aspectRatio: AspectRatio;
  readonly wantImage: boolean;
  readonly wantText: boolean;
  readonly includeThoughts: boolean;
  readonly thinkingHigh: boolean;
  readonly serviceTier: string;
}

export type ParseResult = { ok: true; request: ParsedRequest } | { ok: false; error: SimError };

type Json = Record<string, unknown>;

const snake = (s: string): string => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** Proto field names per message, camelCase; the snake_case spelling is accepted too. */
const FIELDS = {
  request: ['model', 'contents', 'tools', 'toolConfig', 'safetySettings', 'systemInstruction', 'generationConfig', 'cachedContent', 'serviceTier', 'labels'],
  content: ['role', 'parts'],
  part: [
    'text', 'inlineData', 'fileData', 'functionCall', 'functionResponse', 'executableCode', 'codeExecutionResult',
    'thought', 'thoughtSignature', 'videoMetadata', 'partMetadata', 'mediaResolution',
  ],
  blob: ['mimeType', 'data'],
  generationConfig: [
    'candidateCount', 'stopSequences', 'maxOutputTokens', 'temperature', 'topP', 'topK', 'seed', 'responseMimeType',
    'responseSchema', 'responseJsonSchema', 'presencePenalty', 'frequencyPenalty', 'responseLogprobs', 'logprobs',
    'enableEnhancedCivicAnswers', 'responseModalities', 'speechConfig', 'thinkingConfig', 'imageConfig', 'mediaResolution',
    'responseFormat',
  ],
  imageConfig: ['aspectRatio', 'imageSize'],
  thinkingConfig: ['includeThoughts', 'thinkingBudget', 'thinkingLevel'],
} as const;

const DATA_FIELDS = ['text', 'inlineData', 'fileData', 'functionCall', 'functionResponse', 'executableCode', 'codeExecutionResult'];

const MODALITY_ENUM = 'type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig.Modality';
const MODALITIES = ['MODALITY_UNSPECIFIED', 'TEXT', 'IMAGE', 'AUDIO', 'VIDEO'];
const THINKING_ENUM = 'type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.ThinkingLevel';
const THINKING_LEVELS = ['THINKING_LEVEL_UNSPECIFIED', 'MINIMAL', 'LOW', 'MEDIUM', 'HIGH'];
/** Nano Banana 2 thinks at minimal (default) or high; Pro at low or high (reference §1.2). */
const THINKING_ALLOWED: Record<ModelFamily, readonly string[]> = { fast: ['MINIMAL', 'HIGH'], pro: ['LOW', 'HIGH'] };

const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

class Violations {
  readonly list: { field?: string; description: string }[] = [];

  unknown(obj: Json, known: readonly string[], at: string): void {
    const allowed = new Set(known.flatMap((k) => [k, snake(k)]));
    for (const name of Object.keys(obj)) {
      if (!allowed.has(name)) {
        const where = at ? ` at '${at}'` : '';
        this.list.push({ ...(at ? { field: at } : {}), description: `Invalid JSON payload received. Unknown name "${name}"${where}: Cannot find field.` });
      }
    }
  }

  invalidValue(at: string, type: string, value: unknown): void {
    this.list.push({ field: at, description: `Invalid value at '${at}' (${type}), ${JSON.stringify(value)}` });
  }

  required(at: string, description: string): void {
    this.list.push({ field: at, description: `* GenerateContentRequest.${at}: ${description}\n` });
  }
}

function field(obj: Json, camel: string): unknown {
  return obj[camel] ?? obj[snake(camel)];
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** An optional sub-message: undefined when absent, a violation when not an object. */
function message(v: Violations, parent: Json, camel: string, at: string): Json | undefined {
  const value = field(parent, camel);
  if (value === undefined || value === null) return undefined;
  if (!isObject(value)) {
    v.invalidValue(at, 'TYPE_MESSAGE', value);
    return undefined;
  }
  return value;
}

export function parseGenerateRequest(body: unknown, family: ModelFamily): ParseResult {
  const v = new Violations();
  if (!isObject(body)) {
    return { ok: false, error: badRequest([{ description: 'Invalid JSON payload received. Expected an object at the top level.' }]) };
  }
  v.unknown(body, FIELDS.request, '');

  // contents → prompt text and input images
  const texts: string[] = [];
  let inputImages = 0;
  const contents = field(body, 'contents');
  if (contents === undefined || (Array.isArray(contents) && contents.length === 0)) {
    v.required('contents', 'contents is not specified');
  } else if (!Array.isArray(contents)) {
    v.invalidValue('contents', 'TYPE_MESSAGE', contents);
  } else {
    for (const [ci, content] of (contents as unknown[]).entries()) {
      const cAt = `contents[${ci}]`;
      if (!isObject(content)) {
        v.invalidValue(cAt, 'TYPE_MESSAGE', content);
        continue;
      }
      v.unknown(content, FIELDS.content, cAt);
      // Earlier model turns are context, not the instruction; markers and input images come from the user.
      const fromUser = field(content, 'role') !== 'model';
      const parts = field(content, 'parts');
      if (!Array.isArray(parts) || parts.length === 0) {
        v.required(`${cAt}.parts`, 'contents.parts must not be empty.');
        continue;
      }
      for (const [pi, part] of (parts as unknown[]).entries()) {
        const pAt = `${cAt}.parts[${pi}]`;
        if (!isObject(part)) {
          v.invalidValue(pAt, 'TYPE_MESSAGE', part);
          continue;
        }
        v.unknown(part, FIELDS.part, pAt);
        const present = DATA_FIELDS.filter((f) => field(part, f) !== undefined);
        if (present.length === 0) {
          v.required(`${pAt}.data`, "required oneof field 'data' must have one initialized field");
          continue;
        }
        if (present.length > 1) {
          v.list.push({ field: pAt, description: `Invalid JSON payload received. Oneof field 'data' is already set. Cannot set '${snake(present[1]!)}'` });
          continue;
        }
        const text = field(part, 'text');
        if (text !== undefined) {
          if (typeof text !== 'string') v.invalidValue(`${pAt}.text`, 'TYPE_STRING', text);
          else if (fromUser) texts.push(text);
        }
        const blob = message(v, part, 'inlineData', `${pAt}.inline_data`);
        if (blob) {
          v.unknown(blob, FIELDS.blob, `${pAt}.inline_data`);
          const data = field(blob, 'data');
          if (typeof data !== 'string' || !BASE64.test(data)) {
            const shown = typeof data === 'string' ? data.slice(0, 20) : data;
            v.list.push({
              field: `${pAt}.inline_data.data`,
              description: `Invalid value at '${pAt}.inline_data.data' (TYPE_BYTES), Base64 decoding failed for ${JSON.stringify(shown)}`,
            });
          } else if (fromUser) {
            inputImages++;
          }
        }
      }
    }
  }

  // generationConfig
  const gen = message(v, body, 'generationConfig', 'generation_config') ?? {};
  v.unknown(gen, FIELDS.generationConfig, 'generation_config');

  let wantImage = true;
  let wantText = true;
  const modalities = field(gen, 'responseModalities');
  if (modalities !== undefined) {
    if (!Array.isArray(modalities)) {
      v.invalidValue('generation_config.response_modalities', MODALITY_ENUM, modalities);
    } else {
      const upper = modalities.map((m: unknown, i) => {
        const u = typeof m === 'string' ? m.toUpperCase() : '';
        if (!MODALITIES.includes(u)) v.invalidValue(`generation_config.response_modalities[${i}]`, MODALITY_ENUM, m);
        return u;
      });
      if (upper.length > 0) {
        wantImage = upper.includes('IMAGE');
        wantText = upper.includes('TEXT');
        const unsupported = upper.filter((m) => m === 'AUDIO' || m === 'VIDEO');
        if (unsupported.length > 0 && v.list.length === 0) {
          return { ok: false, error: invalidArgument(`Model does not support the requested response modalities: ${unsupported.map((m) => m.toLowerCase()).join(', ')}`) };
        }
      }
    }
  }

  const image = message(v, gen, 'imageConfig', 'generation_config.image_config') ?? {};
  v.unknown(image, FIELDS.imageConfig, 'generation_config.image_config');
  const sizeRaw = field(image, 'imageSize') ?? '1K';
  const ratioRaw = field(image, 'aspectRatio') ?? '1:1';
  if (typeof sizeRaw !== 'string') v.invalidValue('generation_config.image_config.image_size', 'TYPE_STRING', sizeRaw);
  if (typeof ratioRaw !== 'string') v.invalidValue('generation_config.image_config.aspect_ratio', 'TYPE_STRING', ratioRaw);

  const thinking = message(v, gen, 'thinkingConfig', 'generation_config.thinking_config') ?? {};
  v.unknown(thinking, FIELDS.thinkingConfig, 'generation_config.thinking_config');
  const includeThoughts = field(thinking, 'includeThoughts');
  if (includeThoughts !== undefined && typeof includeThoughts !== 'boolean') {
    v.invalidValue('generation_config.thinking_config.include_thoughts', 'TYPE_BOOL', includeThoughts);
  }
  const levelRaw = field(thinking, 'thinkingLevel');
  const level = typeof levelRaw === 'string' ? levelRaw.toUpperCase() : undefined;
  if (levelRaw !== undefined && (level === undefined || !THINKING_LEVELS.includes(level))) {
    v.invalidValue('generation_config.thinking_config.thinking_level', THINKING_ENUM, levelRaw);
  }

  const tierRaw = field(body, 'serviceTier');
  if (tierRaw !== undefined && typeof tierRaw !== 'string') v.invalidValue('service_tier', 'TYPE_ENUM', tierRaw);

  if (v.list.length > 0) return { ok: false, error: badRequest(v.list) };

  // Semantic checks, after the payload is well-formed.
  if (level !== undefined && field(thinking, 'thinkingBudget') !== undefined) {
    return { ok: false, error: invalidArgument('You can only set only one of thinking budget and thinking level.') };
  }
  if (level !== undefined && level !== 'THINKING_LEVEL_UNSPECIFIED' && !THINKING_ALLOWED[family].includes(level)) {
    return { ok: false, error: invalidArgument(`Thinking level ${level} is not supported for this model. Please retry with other thinking level.`) };
  }
  const caps = CAPABILITIES[family];
  const size = sizeRaw as string;
  const ratio = ratioRaw as string;
  if (!(IMAGE_SIZES as readonly string[]).includes(size)) {
    return { ok: false, error: invalidArgument(`Invalid image size "${size}". Supported values are: ${caps.sizes.join(', ')}.`) };
  }
  if (!caps.sizes.includes(size as ImageSize)) {
    return { ok: false, error: invalidArgument(`Unsupported image size: ${size} is not supported by this model. Supported values are: ${caps.sizes.join(', ')}.`) };
  }
  if (!(ASPECT_RATIOS as readonly string[]).includes(ratio) || !caps.aspectRatios.includes(ratio as AspectRatio)) {
    return { ok: false, error: invalidArgument(`Unsupported aspect ratio: ${ratio} is not supported by this model. Supported values are: ${caps.aspectRatios.join(', ')}.`) };
  }

  return {
    ok: true,
    request: {
      prompt: texts.join('\n'),
      inputImages,
      size: size as ImageSize,
      aspectRatio: ratio as AspectRatio,
      wantImage,
      wantText,
      includeThoughts: includeThoughts === true,
      thinkingHigh: level === 'HIGH',
      serviceTier: typeof tierRaw === 'string' ? tierRaw.toLowerCase() : 'standard',
    },
  };
}

/**
 * Best-effort summary of any body, for the request log: rejected requests are upstream calls too,
 * so they are logged with their prompt and asked size even when the body does not validate.
 */
export function describeRequest(body: unknown): { prompt: string; size: string | null; aspectRatio: string | null } {
  if (!isObject(body)) return { prompt: '', size: null, aspectRatio: null };
  const texts: string[] = [];
  const contents = field(body, 'contents');
  for (const content of Array.isArray(contents) ? contents : []) {
    if (!isObject(content) || field(content, 'role') === 'model') continue;
    const parts = field(content, 'parts');
    for (const part of Array.isArray(parts) ? parts : []) {
      const text = isObject(part) ? field(part, 'text') : undefined;
      if (typeof text === 'string') texts.push(text);
    }
  }
  const gen = field(body, 'generationConfig');
  const image = isObject(gen) ? field(gen, 'imageConfig') : undefined;
  const size = isObject(image) ? field(image, 'imageSize') : undefined;
  const ratio = isObject(image) ? field(image, 'aspectRatio') : undefined;
  return {
    prompt: texts.join('\n'),
    size: typeof size === 'string' ? size : image === undefined || isObject(image) ? '1K' : null,
    aspectRatio: typeof ratio === 'string' ? ratio : image === undefined || isObject(image) ? '1:1' : null,
  };
}
