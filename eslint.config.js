import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.pixelmill/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Config is parsed once in src/config; nothing else may read the environment.
      'no-restricted-properties': ['error', { object: 'process', property: 'env', message: 'Read configuration from the frozen Config passed down (src/config/env.ts).' }],
    },
  },
  {
    // Tests read JSON answers loosely; production code may not.
    files: ['test/**'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    files: ['src/config/env.ts', 'src/cli/**', 'test/**', 'bench/**', 'workers/**', 'vitest.config.ts', 'src/dev/**'],
    rules: { 'no-restricted-properties': 'off' },
  },
);
