/**
 * Process entry of a webhook delivery worker (`pixelmill webhook-worker`). Delivery runs on its own
 * queue and process, so a slow receiver never holds an image worker.
 */
import { pathToFileURL } from 'node:url';
import { loadConfig, type Config } from '../src/config/env.js';
import { exitOnConfigError } from '../src/cli/exit.js';

export async function runWebhookWorker(_config: Config): Promise<void> {
  throw new Error('webhook-worker: not built yet');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runWebhookWorker(exitOnConfigError(() => loadConfig())).catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
