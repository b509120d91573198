/**
 * Log lines as the services write them (@ppsd/contract/log): a logger whose JSON lines are kept for
 * assertions, and the parser for a child process's output.
 */
import { createLogger, type Logger, type LogLine, type LogService, parseLogLine } from '@ppsd/contract/log';

export interface CapturedLogger {
  log: Logger;
  /** Every line written so far, parsed; a line that is not a JSON log line throws. */
  lines(): LogLine[];
}

/** A service logger at debug level writing into memory instead of stdout. */
export function captureLogger(service: LogService, base: Record<string, unknown> = {}): CapturedLogger {
  const raw: string[] = [];
  const log = createLogger({
    service,
    level: 'debug',
    base,
    destination: { write: (s: string) => void raw.push(s) },
  });
  return {
    log,
    lines: () =>
      raw.flatMap((chunk) =>
        chunk
          .split('\n')
          .filter(Boolean)
          .map((l) => {
            const parsed = parseLogLine(l);
            if (!parsed) throw new Error(`not a JSON log line: ${l}`);
            return parsed;
          }),
      ),
  };
}

/** The JSON log lines of a process's output (other lines, e.g. a native library's warnings, skipped). */
export function logLines(output: string): LogLine[] {
  return output
    .split('\n')
    .map((l) => parseLogLine(l.trim()))
    .filter((l): l is LogLine => l !== null);
}
