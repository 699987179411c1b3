import type { RouteModule } from '../context.js';

/** Routes of issue 3 (batches); filled in by its module owner. */
export const batchesRoutes: RouteModule = {};
