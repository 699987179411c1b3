/**
 * Peak windows: `HH:MM-HH:MM` ranges in a given IANA zone. A window whose end is before its start
 * wraps midnight (`22:00-02:00`). Start is inclusive, end exclusive.
 */
export interface PeakWindow {
  /** Minutes after local midnight, 0..1439. */
  readonly startMinute: number;
  /** Minutes after local midnight, 0..1440 (1440 = 24:00). */
  readonly endMinute: number;
  readonly label: string;
}

const HHMM = /^([01]\d|2[0-3]):([0-5]\d)$|^24:00$/;

function toMinute(s: string): number {
  if (!HHMM.test(s)) throw new Error(`"${s}" is not a time of day HH:MM`);
  const [h, m] = s.split(':').map(Number) as [number, number];
  return h * 60 + m;
}

/** Parse `10:00-14:00,22:00-02:00`. `none` (or an empty string) means "never peak". */
export function parsePeakWindows(spec: string): PeakWindow[] {
  const windows: PeakWindow[] = [];
  if (spec.trim().toLowerCase() === 'none') return windows;
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\S+)\s*-\s*(\S+)$/.exec(part);
    if (!m) throw new Error(`"${part}" is not a window HH:MM-HH:MM`);
    const startMinute = toMinute(m[1]!);
    const endMinute = toMinute(m[2]!);
    if (startMinute === endMinute) throw new Error(`"${part}" is empty: start equals end`);
    windows.push({ startMinute, endMinute, label: part });
  }
  return windows;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

/** Minutes after local midnight of `at` in `timeZone`. */
export function minuteOfDay(at: Date, timeZone: string): number {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-GB', { timeZone, hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  let hour = 0;
  let minute = 0;
  for (const p of f.formatToParts(at)) {
    if (p.type === 'hour') hour = Number(p.value);
    else if (p.type === 'minute') minute = Number(p.value);
  }
  return hour * 60 + minute;
}

/** The window `at` falls in, or undefined when off-peak. */
export function activePeakWindow(at: Date, windows: readonly PeakWindow[], timeZone: string): PeakWindow | undefined {
  if (windows.length === 0) return undefined;
  const m = minuteOfDay(at, timeZone);
  return windows.find((w) =>
    w.startMinute < w.endMinute ? m >= w.startMinute && m < w.endMinute : m >= w.startMinute || m < w.endMinute,
  );
}
