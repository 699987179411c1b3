/**
 * pino JSON logs. Secrets never reach a line: API keys, webhook secrets, authorization headers and
 * presigned URLs are redacted by path, and nothing logs image bytes or whole job data.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'apiKey', '*.apiKey',
  'headers["x-goog-api-key"]', '*.headers["x-goog-api-key"]',
  'headers.authorization', '*.headers.authorization', 'req.headers.authorization',
  'GEMINI_API_KEY', '*.GEMINI_API_KEY', 'S3_SECRET_ACCESS_KEY', '*.S3_SECRET_ACCESS_KEY', 'API_KEYS', '*.API_KEYS',
  'METRICS_TOKEN', '*.METRICS_TOKEN',
  'WEBHOOK_SECRET', '*.WEBHOOK_SECRET', 'secret', '*.secret',
  'url', '*.url', 'presignedUrl', '*.presignedUrl',
  'data', '*.data',
];

export interface LoggerOptions {
  level: string;
  name?: string;
  /** Where lines go; stdout by default. Tests pass a stream to read lines back. */
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      level: opts.level,
      name: opts.name ?? 'pixelmill',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination,
  );
}

/** A logger that drops everything, for tests that do not read logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
