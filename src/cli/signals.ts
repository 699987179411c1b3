import type { Logger } from '../logging/logger.js';

/**
 * Graceful stop for a worker process: the first SIGTERM/SIGINT runs `close` (which finishes or releases
 * in-flight work) and exits 0; a second signal exits at once (what is left is recovered by the
 * stalled-job check).
 */
export function exitGracefullyOnSignals(logger: Logger, close: () => Promise<void>, what: Record<string, unknown>): void {
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ sig }, 'second signal: exiting now');
      process.exit(1);
    }
    logger.info({ sig, ...what }, 'signal received: graceful shutdown');
    close().then(
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
