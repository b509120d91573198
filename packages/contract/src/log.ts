/**
 * Structured logs, the one definition for the API, the worker and the autoscaler: pino, one JSON object
 * per line on stdout, `{"level":"info","time":"<ISO 8601>","service":"api",...,"msg":"..."}`, plus the
 * context fields below wherever they are known. The level comes from PPSD_LOG_LEVEL (default info).
 *
 * Imported as `@ppsd/contract/log` (not from the package's main entry, which stays free of pino).
 */
import { type DestinationStream, type LevelWithSilent, type Logger, pino } from 'pino';

export type { DestinationStream, Logger } from 'pino';

/** The context field names, the same in every service (log queries and tests rely on them). */
export const LOG_FIELDS = {
  /** 'api' | 'worker' | 'autoscaler' */
  service: 'service',
  /** The API request id (the `x-request-id` header, echoed on the response). */
  reqId: 'reqId',
  /** The authenticated tenant (API), the job's tenant (worker). */
  tenant: 'tenant',
  /** The admin key prefix of an /admin/ request. */
  admin: 'admin',
  jobId: 'jobId',
  /** The job attempt (BullMQ attempts started), from 1. */
  attempt: 'attempt',
  workerId: 'workerId',
  /** A short error message (a serialized Error with its stack goes under pino's `err`). */
  error: 'error',
} as const;

export type LogService = 'api' | 'worker' | 'autoscaler';

/** Context a child logger carries on every line (the names of LOG_FIELDS). */
export interface LogContext {
  reqId?: string;
  tenant?: string;
  admin?: string;
  jobId?: string;
  attempt?: number;
  workerId?: string;
  [field: string]: unknown;
}

export const LOG_LEVELS: readonly LevelWithSilent[] = [
  'fatal',
  'error',
  'warn',
  'info',
  'debug',
  'trace',
  'silent',
];
export const DEFAULT_LOG_LEVEL = 'info';

export interface LoggerOptions {
  service: LogService;
  /** Default: PPSD_LOG_LEVEL, else info. An unknown level logs one warning and uses info. */
  level?: string;
  /** Where the lines go (tests pass a stream that keeps them). Default: stdout, written synchronously. */
  destination?: DestinationStream;
  /** Fields on every line of this logger (e.g. `{workerId}`). */
  base?: LogContext;
}

/** The process's logger for `service`. Children (`log.child({reqId})`) add context fields. */
export function createLogger(opts: LoggerOptions): Logger {
  const asked = (opts.level ?? process.env.PPSD_LOG_LEVEL ?? '').trim().toLowerCase();
  const known = asked === '' || (LOG_LEVELS as readonly string[]).includes(asked);
  const logger = pino(
    {
      level: known && asked ? asked : DEFAULT_LOG_LEVEL,
      base: { [LOG_FIELDS.service]: opts.service, ...opts.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    // synchronous: a line written before process.exit or a crash is never lost (volumes are small)
    opts.destination ?? pino.destination({ dest: 1, sync: true }),
  );
  if (!known) logger.warn(`PPSD_LOG_LEVEL '${asked}' is not one of ${LOG_LEVELS.join(', ')}; using info`);
  return logger;
}

/** A `(msg) => void` for code that takes a plain line logger (engine, package cache): info lines of `log`. */
export const lineLogger =
  (log: Logger) =>
  (msg: string): void =>
    log.info(msg);

/** A parsed log line (what createLogger writes). */
export interface LogLine extends LogContext {
  level: string;
  time: string;
  service: LogService;
  msg: string;
}

/** The JSON log line `line` as an object, or null when it is not one (plain text, a stack trace). */
export function parseLogLine(line: string): LogLine | null {
  if (!line.startsWith('{')) return null;
  try {
    const v = JSON.parse(line) as Partial<LogLine>;
    return typeof v === 'object' && v && typeof v.level === 'string' && typeof v.msg === 'string'
      ? (v as LogLine)
      : null;
  } catch {
    return null;
  }
}

const SHOWN_FIRST = ['service', 'workerId', 'reqId', 'tenant', 'jobId', 'attempt'];

/**
 * A log line for a terminal: `12:00:01.234 INFO  [worker w1 job_x#1] msg key=value ...` (the local stack
 * prints its children this way). Lines that are not JSON log lines come back unchanged.
 */
export function prettyLogLine(line: string): string {
  const l = parseLogLine(line);
  if (!l) return line;
  const { level, time, msg, service, workerId, reqId, tenant, jobId, attempt } = l;
  const where = [
    service,
    workerId,
    reqId && `req ${reqId}`,
    tenant && `tenant ${tenant}`,
    jobId && (attempt !== undefined ? `${jobId}#${attempt}` : jobId),
  ]
    .filter(Boolean)
    .join(' ');
  const err = l.err as { message?: string; stack?: string } | undefined;
  const rest = Object.entries(l)
    .filter(([k]) => !['level', 'time', 'msg', 'err', ...SHOWN_FIRST].includes(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  if (err) rest.push(`err=${err.message ?? JSON.stringify(err)}`);
  const clock = typeof time === 'string' ? time.slice(11, 23) : '';
  const head = [clock, level.toUpperCase().padEnd(5), `[${where}]`, msg, ...rest].filter(Boolean).join(' ');
  return err?.stack ? `${head}\n${err.stack}` : head;
}
