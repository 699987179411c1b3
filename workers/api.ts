/**
 * Process entry of the HTTP API (`pixelmill api`, or `node dist/workers/api.js`). The API never calls
 * the model: it validates, stores inputs, enqueues and reports.
 */
import { pathToFileURL } from 'node:url';
import { loadConfig, type Config } from '../src/config/env.js';
import { createLogger } from '../src/logging/logger.js';
import { startApiServer } from '../src/api/server.js';
import { exitOnConfigError } from '../src/cli/exit.js';

export async function runApi(config: Config): Promise<void> {
  const logger = createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-api' });
  const api = await startApiServer(config, { logger });
  const stop = (sig: NodeJS.Signals) => {
    logger.info({ sig }, 'signal received: closing the API');
    api.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runApi(exitOnConfigError(() => loadConfig())).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
