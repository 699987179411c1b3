import { ConfigError } from '../config/env.js';

/** Run `load`; on invalid configuration print each variable and its rule and exit 2. */
export function exitOnConfigError<T>(load: () => T): T {
  try {
    return load();
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`pixelmill: ${err.message}`);
      console.error('See README.md, "Configuration", for every variable and its default.');
      process.exit(2);
    }
    throw err;
  }
}
