/**
 * Process entry of an image worker (`pixelmill worker`, or `node dist/workers/image-worker.js`).
 *
 * SIGTERM/SIGINT: stop fetching, let in-flight generations finish within SHUTDOWN_GRACE, release the
 * rest to other workers, exit 0. A second signal exits at once (jobs are then recovered by the
 * stalled-job check).
 */
import { pathToFileURL } from 'node:url';
import { loadConfig, type Config } from '../src/config/env.js';
import { createLogger } from '../src/logging/logger.js';
import { startImageWorker } from '../src/worker/image-worker.js';
import { exitOnConfigError } from '../src/cli/exit.js';
import { exitGracefullyOnSignals } from '../src/cli/signals.js';

export async function runImageWorker(config: Config): Promise<void> {
  const logger = createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-worker' });
  const running = startImageWorker(config, { logger });
  exitGracefullyOnSignals(logger, () => running.close(), { graceMs: config.SHUTDOWN_GRACE });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runImageWorker(exitOnConfigError(() => loadConfig())).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
