import type { RouteModule } from '../context.js';

/** Routes of issue 3 (webhooks); filled in by its module owner. */
export const webhooksRoutes: RouteModule = {};
