/**
 * Rewrites one marked section of a benchmark document (`<!-- marker:start -->` .. `<!-- marker:end -->`,
 * both in `body`), leaving the rest untouched; appends the section when the markers are missing.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';

export const sectionMarkers = (marker: string) => ({
  start: `<!-- ${marker}:start -->`,
  end: `<!-- ${marker}:end -->`,
});

export async function replaceSection(file: string, marker: string, body: string): Promise<void> {
  const text = existsSync(file) ? await readFile(file, 'utf8') : '# Benchmarks\n';
  const { start, end } = sectionMarkers(marker);
  const a = text.indexOf(start);
  const b = text.indexOf(end);
  const next =
    a >= 0 && b > a ? text.slice(0, a) + body + text.slice(b + end.length) : `${text.trimEnd()}\n\n${body}\n`;
  await writeFile(file, next);
}
