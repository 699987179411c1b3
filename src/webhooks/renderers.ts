/**
 * The renderers of batch and experiment events register themselves when their module loads; the
 * webhook worker imports this file so every process that delivers can render every event type.
 * (Image events are rendered by render.ts itself.)
 */
import '../experiments/webhook.js';
import '../batches/render.js';
