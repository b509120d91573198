/** Reports progress of long file work: `done` of `total` units (bytes unless stated). */
export type ProgressFn = (done: number, total: number) => void;

/**
 * A stderr progress line ("label  42% (12.3/29.0 MB)") that rewrites itself in a terminal and prints
 * only every 10% otherwise, so logs stay short.
 */
export function stderrProgress(label: string): ProgressFn & { end(): void } {
  const tty = process.stderr.isTTY === true;
  let lastDecile = -1;
  let printed = false;
  const fn = ((done: number, total: number) => {
    const pct = total > 0 ? Math.floor((100 * done) / total) : 100;
    const line = `${label} ${String(pct).padStart(3)}% (${mb(done)}/${mb(total)} MB)`;
    if (tty) {
      process.stderr.write(`\r${line}`);
      printed = true;
    } else if (Math.floor(pct / 10) > lastDecile) {
      lastDecile = Math.floor(pct / 10);
      process.stderr.write(`${line}\n`);
    }
  }) as ProgressFn & { end(): void };
  fn.end = () => {
    if (tty && printed) process.stderr.write('\n');
  };
  return fn;
}

const mb = (bytes: number): string => (bytes / 1e6).toFixed(1);
