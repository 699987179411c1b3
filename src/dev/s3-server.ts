/**
 * A local S3-protocol server (s3rver) for the embedded stack and tests. It speaks real S3 over HTTP,
 * so the production S3 client code runs unchanged against it.
 */
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { freePort } from './free-port.js';

const require = createRequire(import.meta.url);

/** s3rver accepts these credentials (its documented defaults). */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export interface EmbeddedS3 {
  readonly endpoint: string;
  readonly port: number;
  readonly directory: string;
  stop(): Promise<void>;
}

interface S3rverInstance {
  run(): Promise<{ port: number }>;
  close(): Promise<void>;
}

export async function startS3Server(opts: { directory: string; buckets?: string[]; port?: number }): Promise<EmbeddedS3> {
  mkdirSync(opts.directory, { recursive: true });
  const S3rver = require('s3rver') as new (o: Record<string, unknown>) => S3rverInstance;
  const port = opts.port ?? (await freePort());
  const server = new S3rver({
    address: '127.0.0.1',
    port,
    silent: true,
    directory: opts.directory,
    // Path-style only: virtual-host buckets would need DNS for <bucket>.127.0.0.1.
    vhostBuckets: false,
    configureBuckets: (opts.buckets ?? []).map((name) => ({ name })),
  });
  await server.run();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    directory: opts.directory,
    stop: () => server.close(),
  };
}
