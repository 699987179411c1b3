/**
 * What every route module receives. Route modules (src/api/routes/*.ts) are fastify plugins written
 * against this context, so the server stays a list of registrations.
 */
import type { Queue } from 'bullmq';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { Logger } from '../logging/logger.js';
import type { ImageJobProducer } from '../queue/producer.js';
import type { ObjectStore } from '../storage/object-store.js';

export interface RouteContext {
  config: Config;
  producer: ImageJobProducer;
  /** The image queue. */
  queue: Queue;
  /** The API's producer connection (fails fast when Redis is down). */
  redis: Redis;
  store: ObjectStore;
  logger: Logger;
  /** The authenticated tenant of a /v1 request (null without API_KEYS). */
  tenantOf(request: FastifyRequest): string | null;
  /** Close what a route module opened (QueueEvents, subscribers) when the server closes. */
  onClose(fn: () => Promise<void>): void;
}

/** A route module: `v1` routes are mounted under /v1 behind authentication; `root` routes are public. */
export interface RouteModule {
  v1?(v1: FastifyInstance, ctx: RouteContext): Promise<void>;
  root?(root: FastifyInstance, ctx: RouteContext): Promise<void>;
}
