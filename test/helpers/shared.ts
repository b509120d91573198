/** Paths to the read-only ../shared material (never copied into the repo) and scratch folders. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

export const repoRoot = path.resolve(import.meta.dirname, '../..');
export const sharedDir = path.resolve(repoRoot, '../shared');
export const sharedPath = (...parts: string[]): string => path.join(sharedDir, ...parts);

export const STORIES260K = sharedPath('models/stories260K/stories260K.bin');
export const TOK512 = sharedPath('models/stories260K/tok512.bin');
export const LLAMA2_TOKENIZER = sharedPath('models/llama2-tokenizer/tokenizer.bin');
export const EXPECTED_GREEDY_200 = sharedPath('models/stories260K/expected-greedy-200.txt');
export const TINYSTORIES_VAL = sharedPath('corpus/tinystories-val.txt');

/** A fresh folder under the OS temp dir; `cleanup` removes it. */
export async function scratchDir(
  prefix = 'ppsd-test-',
): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

const execFileAsync = promisify(execFile);

/** Runs the real `ppsd` CLI in a child process; a failure comes back as its exit code and output. */
export async function runPpsd(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(
      'node',
      ['--import', 'tsx', 'workers/engine/src/cli/main.ts', ...args],
      { cwd: repoRoot, maxBuffer: 16 * 1024 * 1024 },
    );
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}
