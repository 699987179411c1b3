/**
 * Object storage on the S3 protocol. The same code path serves AWS S3, MinIO, Cloudflare R2 and the
 * embedded s3rver: only the endpoint, path style and credentials differ (all from Config).
 */
import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import {
  CreateBucketCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, PutObjectCommand, S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';

export interface PutResult {
  key: string;
  bytes: number;
  sha256: string;
}

export interface ObjectStore {
  readonly bucket: string;
  put(key: string, body: Buffer, contentType: string, metadata?: Record<string, string>): Promise<PutResult>;
  get(key: string): Promise<{ body: Buffer; contentType: string | undefined }>;
  /** Size and type, or undefined when the object does not exist. */
  head(key: string): Promise<{ bytes: number; contentType: string | undefined; metadata: Record<string, string> } | undefined>;
  presignGet(key: string, ttlMs: number): Promise<string>;
  /** Throws when the bucket cannot be reached (readiness probe). */
  ping(): Promise<void>;
  /** Create the bucket if it is missing (embedded and test stacks only). */
  ensureBucket(): Promise<void>;
  destroy(): void;
}

export interface S3StoreOptions {
  /** Sockets in the pool: size it to the worker's concurrency (the SDK's default is 50). */
  maxSockets?: number;
}

export function s3ClientConfig(config: Config, opts: S3StoreOptions = {}): S3ClientConfig {
  const maxSockets = opts.maxSockets ?? 50;
  const credentials =
    config.S3_ACCESS_KEY_ID && config.S3_SECRET_ACCESS_KEY
      ? { accessKeyId: config.S3_ACCESS_KEY_ID, secretAccessKey: config.S3_SECRET_ACCESS_KEY }
      : undefined; // the standard AWS credential chain
  return {
    region: config.S3_REGION,
    ...(config.S3_ENDPOINT ? { endpoint: config.S3_ENDPOINT } : {}),
    // S3-compatible servers want path-style addressing; AWS prefers virtual-hosted.
    forcePathStyle: config.S3_FORCE_PATH_STYLE ?? Boolean(config.S3_ENDPOINT),
    ...(credentials ? { credentials } : {}),
    // Since SDK v3.729 every PUT carries a CRC32 checksum header that R2, MinIO and others reject.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: new NodeHttpHandler({
      httpAgent: new HttpAgent({ keepAlive: true, maxSockets }),
      httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets }),
      connectionTimeout: 5_000,
      requestTimeout: 60_000,
    }),
    maxAttempts: 3,
  };
}

export function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function storageError(action: string, key: string, err: unknown): PixelmillError {
  const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  return new PixelmillError('STORAGE_FAILED', `${action} ${key} failed: ${e.name ?? 'Error'} ${e.message ?? ''}`.trim(), {
    cause: err,
    details: { key, status: e.$metadata?.httpStatusCode },
  });
}

export function createS3Store(config: Config, opts: S3StoreOptions = {}): ObjectStore {
  const client = new S3Client(s3ClientConfig(config, opts));
  const bucket = config.S3_BUCKET;
  return {
    bucket,
    async put(key, body, contentType, metadata) {
      const sha256 = sha256Hex(body);
      try {
        const command = new PutObjectCommand({
          Bucket: bucket, Key: key, Body: body, ContentLength: body.length, ContentType: contentType,
          Metadata: { ...metadata, sha256 },
        });
        // SigV4 signs the payload's sha256; it is the one just computed, so the signer need not hash
        // the image a second time (it takes a payload hash already in x-amz-content-sha256).
        command.middlewareStack.add(
          (next) => async (args) => {
            const request = args.request as { headers?: Record<string, string> };
            if (request.headers) request.headers['x-amz-content-sha256'] = sha256;
            return next(args);
          },
          { step: 'build', name: 'pixelmillPayloadHash' },
        );
        await client.send(command);
      } catch (err) {
        throw storageError('PutObject', key, err);
      }
      return { key, bytes: body.length, sha256 };
    },
    async get(key) {
      try {
        const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        const bytes = await out.Body!.transformToByteArray();
        return { body: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), contentType: out.ContentType };
      } catch (err) {
        throw storageError('GetObject', key, err);
      }
    },
    async head(key) {
      try {
        const out = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
        return { bytes: out.ContentLength ?? 0, contentType: out.ContentType, metadata: out.Metadata ?? {} };
      } catch (err) {
        const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
        if (e.name === 'NotFound' || e.$metadata?.httpStatusCode === 404) return undefined;
        throw storageError('HeadObject', key, err);
      }
    },
    presignGet(key, ttlMs) {
      return getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: key }), {
        expiresIn: Math.max(1, Math.round(ttlMs / 1000)),
      });
    },
    async ping() {
      await client.send(new HeadBucketCommand({ Bucket: bucket }));
    },
    async ensureBucket() {
      try {
        await client.send(new HeadBucketCommand({ Bucket: bucket }));
      } catch {
        await client.send(new CreateBucketCommand({ Bucket: bucket }));
      }
    },
    destroy() {
      client.destroy();
    },
  };
}

/** File extension of an image MIME type (JPEG is the default: the 3.x models answer JPEG). */
export function extensionFor(mimeType: string): 'png' | 'webp' | 'jpg' {
  return mimeType === 'image/png' ? 'png' : mimeType === 'image/webp' ? 'webp' : 'jpg';
}

/** The deterministic output key of a job: a retry overwrites, never duplicates. */
export function outputKey(config: Config, jobId: string, mimeType: string): string {
  return [config.S3_KEY_PREFIX, `${jobId}.${extensionFor(mimeType)}`].filter(Boolean).join('/');
}

/** Where inline input images of a job are kept. */
export function inputKey(config: Config, jobId: string, index: number, mimeType: string): string {
  return [config.S3_KEY_PREFIX, 'inputs', jobId, `${index}.${extensionFor(mimeType)}`].filter(Boolean).join('/');
}

/** S3 metadata that records which tenant an object belongs to (checked when it is used as an input). */
export function tenantMetadata(tenant: string | null): Record<string, string> {
  return tenant === null ? {} : { tenant };
}
