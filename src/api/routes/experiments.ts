import type { RouteModule } from '../context.js';

/** Routes of issue 3 (experiments); filled in by its module owner. */
export const experimentsRoutes: RouteModule = {};
