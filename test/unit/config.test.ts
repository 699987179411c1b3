import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/env.js';

describe('configuration', () => {
  it('applies the documented defaults and freezes the result', () => {
    const c = loadConfig({});
    expect(c.REDIS_URL).toBe('redis://127.0.0.1:6379');
    expect(c.QUEUE_PREFIX).toBe('pixelmill');
    expect(c.S3_REGION).toBe('us-east-1');
    expect(c.GEMINI_BASE_URL).toBe('https://generativelanguage.googleapis.com');
    expect(c.MODEL_FAST).toEqual(['gemini-3.1-flash-image', 'gemini-3.1-flash-image-preview']);
    expect(c.MODEL_PRO).toEqual(['gemini-3-pro-image', 'gemini-3-pro-image-preview']);
    expect(c.UPSTREAM_TIMEOUT_MS).toBe(360_000);
    expect(c.MAX_ATTEMPTS).toBe(5);
    expect(c.PORT).toBe(8080);
    expect(c.PEAK_TIMEZONE).toBe('UTC');
    expect(c.PEAK_WINDOWS).toEqual([{ startMinute: 600, endMinute: 840, label: '10:00-14:00' }]);
    expect(c.JOB_RETENTION).toBe(7 * 86_400_000);
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.MODEL_FAST)).toBe(true);
    expect(() => {
      (c as { PORT: number }).PORT = 1;
    }).toThrow();
  });

  it('parses lists, durations and booleans', () => {
    const c = loadConfig({
      MODEL_FAST: ' a-1 , b-2 ', PEAK_WINDOWS: '22:00-02:00, 09:30-10:00', SHUTDOWN_GRACE: '5m',
      S3_FORCE_PATH_STYLE: 'true', API_KEYS: 'acme:0123456789abcdef0123,beta:fedcba9876543210fedc', HOST: '0.0.0.0',
    });
    expect(c.MODEL_FAST).toEqual(['a-1', 'b-2']);
    expect(c.PEAK_WINDOWS.map((w) => w.label)).toEqual(['22:00-02:00', '09:30-10:00']);
    expect(c.SHUTDOWN_GRACE).toBe(300_000);
    expect(c.S3_FORCE_PATH_STYLE).toBe(true);
    expect(c.API_KEYS).toEqual([
      { tenant: 'acme', key: '0123456789abcdef0123' },
      { tenant: 'beta', key: 'fedcba9876543210fedc' },
    ]);
  });

  it.each([
    ['REDIS_URL', 'http://x', 'redis://'],
    ['PORT', 'eighty', 'number'],
    ['PORT', '70000', 'at most 65535'],
    ['MAX_ATTEMPTS', '0', 'at least 1'],
    ['PEAK_WINDOWS', '10-14', 'HH:MM'],
    ['PEAK_WINDOWS', '25:00-26:00', 'time of day'],
    ['PEAK_TIMEZONE', 'Mars/Olympus', 'IANA'],
    ['MODEL_PRO', ',', 'at least one model id'],
    ['S3_FORCE_PATH_STYLE', 'maybe', 'true or false'],
    ['SHUTDOWN_GRACE', 'soon', 'duration'],
    ['API_KEYS', 'nokey', 'tenant:key'],
    ['METRICS_TOKEN', 'short', 'at least 16 characters'],
    ['LOG_LEVEL', 'loud', ''],
    ['WEBHOOK_SECRET', 'whsec_c2hvcnQ=', 'whsec_ followed by the base64 of 24 to 64 random bytes'],
    ['WEBHOOK_ALLOWED_CIDRS', '300.1.1.1/8', 'not a CIDR'],
    ['WEBHOOK_RETRY_SCHEDULE', '0s,5s,soon', 'not a duration'],
  ])('rejects %s=%s naming the variable and the rule', (variable, value, rule) => {
    try {
      loadConfig({ [variable]: value });
      expect.unreachable('should throw');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      const problem = (err as ConfigError).problems.find((p) => p.variable === variable);
      expect(problem, (err as Error).message).toBeDefined();
      expect(problem!.message).toContain(rule);
      expect((err as Error).message).toContain(variable);
    }
  });

  it('refuses a wide HOST without API keys, and half-set S3 credentials', () => {
    expect(() => loadConfig({ HOST: '0.0.0.0' })).toThrow(/HOST: may widen the listen address only when API_KEYS is set/);
    expect(() => loadConfig({ S3_ACCESS_KEY_ID: 'x' })).toThrow(/S3_SECRET_ACCESS_KEY/);
    expect(() => loadConfig({ MODEL_FAST: 'a', MODEL_PRO: 'a' })).toThrow(/MODEL_PRO: must not repeat/);
  });

  it('treats empty strings as unset', () => {
    expect(loadConfig({ PORT: '', S3_ENDPOINT: '' }).PORT).toBe(8080);
  });
});
