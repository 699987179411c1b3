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

export async function runWebhookWorker(config: Config): Promise<void> {
  const logger = createLogger({ level: config.LOG_LEVEL, name: 'pixelmill-webhooks' });
  const running = startWebhookWorker(config, { logger });
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ sig }, 'second signal: exiting now');
      process.exit(1);
    }
    logger.info({ sig, timeoutMs: config.WEBHOOK_TIMEOUT_MS }, 'signal received: finishing in-flight deliveries');
    running.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err: String(err) }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runWebhookWorker(exitOnConfigError(() => loadConfig())).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
