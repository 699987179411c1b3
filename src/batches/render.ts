/**
 * Registers the batch renderer of webhook payloads: batch.completed carries what GET /v1/batches/:id
 * answers. Imported for its effect by the API's batch routes and by the webhook worker process.
 */
import { registerEventRenderer } from '../webhooks/render.js';
import { getBatchView } from './view.js';

registerEventRenderer('batch', (id, deps) => getBatchView(id, undefined, { config: deps.config, redis: deps.redis, now: deps.now }));
