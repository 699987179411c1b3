/**
 * Redis connections. BullMQ's rules (docs "going to production"):
 * - workers and QueueEvents block on Redis, so their connections need `maxRetriesPerRequest: null`
 *   and keep the offline queue (they wait out a Redis restart);
 * - producers (the API) fail fast with `enableOfflineQueue: false`, so a request never gets a 202 for
 *   a job that was not stored.
 */
import { Redis, type RedisOptions } from 'ioredis';
import type { Config } from '../config/env.js';

export type RedisRole = 'producer' | 'worker';

export function redisOptions(role: RedisRole): RedisOptions {
  return role === 'producer'
    ? { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2_000, lazyConnect: false }
    : { maxRetriesPerRequest: null, enableOfflineQueue: true };
}

export function createRedis(config: Config, role: RedisRole): Redis {
  const client = new Redis(config.REDIS_URL, redisOptions(role));
  // Connection errors are reported through commands; an unhandled 'error' event would crash the process.
  client.on('error', () => {});
  return client;
}
