import type { RouteModule } from '../context.js';

/** Routes of issue 3 (live); filled in by its module owner. */
export const liveRoutes: RouteModule = {};
