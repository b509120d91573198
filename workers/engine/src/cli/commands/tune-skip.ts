/**
 * `ppsd tune-skip <package>`: searches Draft & Verify's skip set by measured tokens/s of the DV decoder
 * (with its adaptive, confidence-based draft exiting) on a few short prompts, each candidate timed next
 * to AR, and stores the best in the package: `tuning/skip-set.json` (the whole search, checksummed) and
 * manifest `skipSet: { file, attention, mlp, speedup, tokensPerSecond, acceptance, ... }`.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { timeGeneration } from '../../bench/harness';
import { pooledRate } from '../../bench/report';
import { median } from '../../bench/stats';
import { searchSkipSet, skipKey } from '../../calibrate/skip-search';
import { createDecoder } from '../../decode/index';
import type { SkipSet } from '../../model/llama';
import { addPackageFile, loadPackage } from '../../package';
import { numberFlag, parseCommandArgs, UsageError } from '../args';

const REPO = path.resolve(import.meta.dirname, '../../../../..');

const HELP = `usage: ppsd tune-skip <package> [options]

Searches the sub-layers (attention / MLP) that DV's draft skips, scoring each candidate by the DV
decoder's measured tokens/s relative to AR timed right next to it; stores the best in the package.

options:
  --prompts FILE     one prompt per line (default prompts/bench-prompts.txt)
  --prompt-count N   prompts per measurement (default 3)
  --max-tokens N     tokens per generation (default 32)
  --evals N          candidates to measure at most (default 24)
  --rounds N         measurement rounds per candidate, AR and DV alternating; median (default 3)
  --no-store         search only`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(
    argv,
    {
      prompts: { type: 'string' },
      'prompt-count': { type: 'string' },
      'max-tokens': { type: 'string' },
      evals: { type: 'string' },
      rounds: { type: 'string' },
      'no-store': { type: 'boolean' },
    },
    HELP,
  );
  if (positionals.length !== 1) throw new UsageError(`expected one package folder\n\n${HELP}`);
  const dir = positionals[0];
  const log = (msg: string) => process.stderr.write(`tune-skip: ${msg}\n`);
  const maxTokens = numberFlag(values['max-tokens'], 'max-tokens', 32);
  const evals = numberFlag(values.evals, 'evals', 24);
  const rounds = numberFlag(values.rounds, 'rounds', 3);
  const promptFile = values.prompts ?? path.join(REPO, 'prompts/bench-prompts.txt');
  const texts = (await readFile(promptFile, 'utf8'))
    .split('\n')
    .map((s) => s.trim())
    .filter((s) => s && !s.startsWith('#'))
    .slice(0, numberFlag(values['prompt-count'], 'prompt-count', 3));
  if (texts.length === 0) throw new UsageError(`no prompts in ${promptFile}`);

  const pkg = await loadPackage(dir);
  const { model, tokenizer } = pkg;
  const prompts = texts.map((t) => Int32Array.from(tokenizer.encodePrompt(t)));
  const maxSeqLen = Math.min(model.config.maxSeqLen, 512);
  const ar = await createDecoder('ar', { model, maxSeqLen });
  try {
    for (const p of prompts) await timeGeneration(ar, p, maxTokens); // warm-up
    const evaluate = async (skip: SkipSet) => {
      const dv = await createDecoder('dv', { model, skipSet: skip, maxSeqLen });
      try {
        await timeGeneration(dv, prompts[0], Math.min(8, maxTokens)); // warm-up
        const ratios: number[] = [];
        const rates: number[] = [];
        let proposed = 0;
        let accepted = 0;
        for (let round = 0; round < rounds; round++) {
          const arRuns: { tokens: number; decodeMs: number }[] = [];
          const dvRuns: { tokens: number; decodeMs: number }[] = [];
          for (const p of prompts) {
            const a = await timeGeneration(ar, p, maxTokens);
            arRuns.push({ tokens: a.tokens.length, decodeMs: a.decodeMs });
            const d = await timeGeneration(dv, p, maxTokens);
            dvRuns.push({ tokens: d.tokens.length, decodeMs: d.decodeMs });
            proposed += d.stats.draftTokensProposed;
            accepted += d.stats.draftTokensAccepted;
          }
          const rate = pooledRate(dvRuns);
          rates.push(rate);
          ratios.push(rate / pooledRate(arRuns));
        }
        return {
          speedup: median(ratios),
          tokensPerSecond: median(rates),
          acceptance: proposed ? accepted / proposed : 0,
        };
      } finally {
        await dv.close();
      }
    };
    const { best, tried } = await searchSkipSet(evaluate, {
      nLayers: model.config.nLayers,
      maxEvaluations: evals,
      log,
    });
    console.log(
      `best skip set: ${skipKey(best.skip)}: DV ${best.tokensPerSecond.toFixed(1)} tok/s, ${best.speedup.toFixed(3)}x AR, acceptance ${best.acceptance.toFixed(3)} (${tried.length} candidates measured)`,
    );
    if (!values['no-store']) {
      const record = {
        attention: best.skip.attention,
        mlp: best.skip.mlp,
        speedup: round4(best.speedup),
        tokensPerSecond: round4(best.tokensPerSecond),
        acceptance: round4(best.acceptance),
        candidates: tried.length,
        prompts: texts.length,
        maxTokens,
        rounds,
        measuredAt: new Date().toISOString(),
      };
      const file = 'tuning/skip-set.json';
      const body = JSON.stringify(
        {
          best: record,
          tried: tried.map((t) => ({
            ...t.skip,
            speedup: round4(t.speedup),
            tokensPerSecond: round4(t.tokensPerSecond),
            acceptance: round4(t.acceptance),
          })),
        },
        null,
        2,
      );
      await addPackageFile(dir, file, `${body}\n`, { skipSet: null });
      await addPackageFile(dir, file, `${body}\n`, { skipSet: { file, ...record } });
      log(`stored skipSet in ${dir}/manifest.json`);
    }
  } finally {
    await ar.close();
  }
}

const round4 = (x: number) => Math.round(x * 1e4) / 1e4;
