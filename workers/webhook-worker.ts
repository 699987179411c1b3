/**
 * Process entry of a webhook delivery worker (`pixelmill webhook-worker`). Delivery runs on its own
 * queue and process, so a slow receiver never holds an image worker.
 *
 * SIGTERM/SIGINT: stop taking deliveries, let in-flight sends finish (each bounded by
 * WEBHOOK_TIMEOUT_MS), exit 0. A second signal exits at once; deliveries in flight are then sent
 * again by another worker after their lock lapses (same webhook-id).
 */
import { pathToFileURL } from 'node:url';
import { loadConfig, type Config } from '../src/config/env.js';
import { createLogger } from '../src/logging/logger.js';
import { startWebhookWorker } from '../src/webhooks/worker.js';
import { exitOnConfigError } from '../src/cli/exit.js';
import { exitGracefullyOnSignals } from '../src/cli/signals.js';

export async function runWebhookWorker(config: Config): Promise<void> {
  const logger = createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-webhooks' });
  const running = startWebhookWorker(config, { logger });
  exitGracefullyOnSignals(logger, () => running.close(), { timeoutMs: config.WEBHOOK_TIMEOUT_MS });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runWebhookWorker(exitOnConfigError(() => loadConfig())).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
