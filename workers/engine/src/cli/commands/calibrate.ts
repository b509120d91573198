/**
 * `ppsd calibrate <package> [--corpus FILE] [--exit-layer E|auto] [--stages k] [--drafter spd]`
 *
 * Fits early-exit heads on the model's own hidden states over corpus text and measures, on text held
 * apart from the fitting text, how often each head's greedy token equals the final layer's: the plain
 * logit lens, a least-squares affine map h_E -> h_N, and that map distilled to the final layer's
 * distribution (KL + top-1 cross-entropy through the frozen final norm + classifier). Stores the chosen
 * head in the package (manifest `exitHeads`, checksummed) and prints the acceptance table on stdout;
 * progress goes to stderr. `--drafter spd` fits SPD's multi-depth drafter instead and reports its
 * acceptance next to the exit head's at the same E.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { planSpeedup } from '../../bench/ideal';
import { exitAgreement, featureAgreement } from '../../calibrate/agreement';
import {
  collectHiddenStates,
  type HiddenDataset,
  ROW_GREEDY,
  rowMask,
  splitCorpus,
} from '../../calibrate/data';
import {
  autoExitLayer,
  bestHead,
  expectedSpeedup,
  fitExitHeads,
  type LayerResult,
} from '../../calibrate/exit-heads';
import { fitSpdMap, spdFeatures, toSpdWeights } from '../../calibrate/spd';
import { loadExitHead, saveExitHead } from '../../decode/heads';
import { stageBoundaries } from '../../decode/pipeline';
import { saveSpdDrafter, spdFeatureLags } from '../../decode/spd-drafter';
import { chooseExitLayer } from '../../decoder-setup';
import type { LlamaModel } from '../../model/llama';
import { addPackageFile, loadPackage } from '../../package';
import type { Tokenizer } from '../../tokenizer/tokenizer';
import { numberFlag, parseCommandArgs, UsageError } from '../args';

const SHARED = path.resolve(import.meta.dirname, '../../../../../../shared');
const DEFAULT_CORPUS = path.join(SHARED, 'corpus/tinystories-val.txt');

const HELP = `usage: ppsd calibrate <package> [options]

Fits an early-exit head (or SPD's drafter) on the model's hidden states over a text corpus, measures
greedy acceptance on held-out text, and stores the result in the package.

options:
  --corpus FILE        text, paragraphs separated by blank lines (default ../shared/corpus/tinystories-val.txt)
  --exit-layer E|auto  layer to store a head for (default auto: best expected PPSD speedup for --stages;
                       with --drafter spd: the stored head with the best expected speedup)
  --stages k           pipeline stages the speedup estimate / SPD drafter plan for (default 2)
  --drafter spd        fit SPD's multi-depth drafter for the k-stage plan instead of exit heads
  --fit-rows N         teacher-forced fitting positions (default 16000)
  --greedy N           greedy continuations (12-token prefix + 32 tokens) for fitting (default 160)
  --held-out N         held-out greedy continuations to measure on (default 60)
  --held-rows N        held-out teacher-forced positions (default 3000)
  --epochs N           distillation epochs (default 4; 0 = least squares only)
  --lr X               distillation learning rate (default 0.002)
  --ce X               weight of the top-1 cross-entropy term next to the KL (default 0.5)
  --all-heads          store the best head of every layer, not only the chosen one
  --no-store           measure only, change nothing
  --json FILE          also write the results as JSON`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(
    argv,
    {
      corpus: { type: 'string' },
      'exit-layer': { type: 'string' },
      stages: { type: 'string' },
      drafter: { type: 'string' },
      'fit-rows': { type: 'string' },
      greedy: { type: 'string' },
      'held-out': { type: 'string' },
      'held-rows': { type: 'string' },
      epochs: { type: 'string' },
      lr: { type: 'string' },
      ce: { type: 'string' },
      'all-heads': { type: 'boolean' },
      'no-store': { type: 'boolean' },
      json: { type: 'string' },
    },
    HELP,
  );
  if (positionals.length !== 1) throw new UsageError(`expected one package folder\n\n${HELP}`);
  const dir = positionals[0];
  const k = numberFlag(values.stages, 'stages', 2);
  const epochs = numberFlag(values.epochs, 'epochs', 4);
  const lr = numberFlag(values.lr, 'lr', 2e-3);
  const ce = numberFlag(values.ce, 'ce', 0.5);
  if (values.drafter !== undefined && values.drafter !== 'spd')
    throw new UsageError(`--drafter must be 'spd'`);
  const exitFlag = values['exit-layer'] ?? 'auto';
  const log = (msg: string) => process.stderr.write(`calibrate: ${msg}\n`);

  const t0 = performance.now();
  log(`loading ${dir}`);
  const pkg = await loadPackage(dir);
  const { model, tokenizer } = pkg;
  const N = model.config.nLayers;
  if (!Number.isInteger(k) || k < 2 || k > N)
    throw new UsageError(`--stages must be an integer in [2, ${N}]`);
  let fixedE: number | undefined;
  if (exitFlag !== 'auto') {
    fixedE = numberFlag(exitFlag, 'exit-layer');
    if (!Number.isInteger(fixedE) || fixedE < 1 || fixedE >= N)
      throw new UsageError(`--exit-layer must be 'auto' or an integer in [1, ${N - 1}]`);
  }
  const corpusPath = values.corpus ?? DEFAULT_CORPUS;
  let text: string;
  try {
    text = await readFile(corpusPath, 'utf8');
  } catch {
    throw new UsageError(`cannot read corpus ${corpusPath}`);
  }
  const { fit, held } = collect(model, tokenizer, text, {
    fitRows: numberFlag(values['fit-rows'], 'fit-rows', 16000),
    greedy: numberFlag(values.greedy, 'greedy', 160),
    heldOut: numberFlag(values['held-out'], 'held-out', 60),
    heldRows: numberFlag(values['held-rows'], 'held-rows', 3000),
    log,
  });
  const distill = epochs > 0 ? { epochs, lr, ceWeight: ce } : (false as const);
  const store = !values['no-store'];

  if (values.drafter === 'spd') {
    const E = fixedE ?? chooseExitLayer(pkg, k);
    const b = stageBoundaries(N, k, E);
    const depths = b.slice(1);
    const lags = spdFeatureLags(depths, b);
    log(
      `SPD drafter for stages [${b.join(', ')}]: features emb(x_t) + depths ${depths.map((d, i) => `${d}@t-${lags[i]}`).join(', ')}`,
    );
    const spd = fitSpdMap(model, fit, depths, lags, {
      distill: distill && {
        ...distill,
        onEpoch: (e, loss) => log(`spd: distill epoch ${e}/${epochs} loss ${loss.toFixed(4)}`),
      },
    });
    const xs = spdFeatures(held, depths, lags);
    const use = rowMask(held, ROW_GREEDY);
    const lsqAcc = featureAgreement(model, xs, spd.width, held.target, spd.lsq, use).rate;
    const distAcc = spd.distilled
      ? featureAgreement(model, xs, spd.width, held.target, spd.distilled, use).rate
      : undefined;
    const chosen = distAcc !== undefined && distAcc >= lsqAcc ? spd.distilled! : spd.lsq;
    const acceptance = Math.max(lsqAcc, distAcc ?? 0);
    // the exit head at the same E, for comparison: the stored one, else the logit lens
    const stored = await loadExitHead(dir, E, pkg.manifest);
    const headAcc = exitAgreement(model, held, E, stored?.affine, use).rate;
    const lensAcc = exitAgreement(model, held, E, undefined, use).rate;
    console.log(
      `SPD drafter, ${k} stages [${b.join(', ')}], held-out greedy acceptance (${use.reduce((a, x) => a + x, 0)} positions):\n`,
    );
    console.log('| drafter | acceptance |');
    console.log('|---|---|');
    console.log(`| exit head at E=${E}, logit lens | ${lensAcc.toFixed(3)} |`);
    if (stored)
      console.log(
        `| exit head at E=${E}, stored (${pkg.manifest.exitHeads?.[String(E)]?.kind}) | ${headAcc.toFixed(3)} |`,
      );
    console.log(`| SPD drafter, least squares | ${lsqAcc.toFixed(3)} |`);
    if (distAcc !== undefined) console.log(`| SPD drafter, distilled | ${distAcc.toFixed(3)} |`);
    if (store) {
      const weights = toSpdWeights(chosen, depths, model.config.dim);
      const tmp = path.join(tmpdir(), `ppsd-spd-${process.pid}.safetensors`);
      try {
        await saveSpdDrafter(tmp, weights);
        const bytes = new Uint8Array(await readFile(tmp));
        await addPackageFile(dir, 'drafters/spd-drafter.safetensors', bytes, { drafters: { spd: null } });
        await addPackageFile(dir, 'drafters/spd-drafter.safetensors', bytes, {
          drafters: {
            spd: {
              file: 'drafters/spd-drafter.safetensors',
              kind: distAcc !== undefined && chosen === spd.distilled ? 'distilled' : 'affine-lsq',
              depths,
              stages: k,
              exitLayer: E,
              acceptance: round4(acceptance),
              metrics: {
                lsq: round4(lsqAcc),
                distilled: distAcc === undefined ? null : round4(distAcc),
                heldOutPositions: use.reduce((a, x) => a + x, 0),
              },
            },
          },
        });
      } finally {
        await rm(tmp, { force: true });
      }
      log(`stored drafters/spd-drafter.safetensors (acceptance ${acceptance.toFixed(3)})`);
    }
    if (values.json) {
      await writeFile(
        values.json,
        `${JSON.stringify({ package: pkg.manifest.name, stages: k, exitLayer: E, depths, lens: lensAcc, exitHead: stored ? headAcc : null, lsq: lsqAcc, distilled: distAcc ?? null }, null, 2)}\n`,
      );
    }
    log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return;
  }

  const layers = Array.from({ length: N - 1 }, (_, i) => i + 1);
  const results = fitExitHeads(model, fit, held, { layers, distill, log });
  const E = fixedE ?? autoExitLayer(results, N, k);
  printTable(results, N, k, E);
  if (store) {
    const targets = values['all-heads'] ? results : results.filter((r) => r.layer === E);
    for (const r of targets) {
      const best = bestHead(r);
      await saveExitHead(dir, r.layer, best.head, {
        kind: best.kind,
        acceptance: best.acceptance,
        metrics: {
          logitLens: round4(r.lens),
          leastSquares: round4(r.lsq),
          distilled: r.distilled === undefined ? null : round4(r.distilled),
          heldOutPositions: r.positions,
          teacherForced: {
            logitLens: round4(r.teacher.lens),
            leastSquares: round4(r.teacher.lsq),
            distilled: r.teacher.distilled === undefined ? null : round4(r.teacher.distilled),
          },
          corpus: path.basename(corpusPath),
        },
      });
      log(
        `stored heads/exit-${r.layer}.safetensors (${best.kind}, acceptance ${best.acceptance.toFixed(3)})`,
      );
    }
  }
  if (values.json) {
    const json = {
      package: pkg.manifest.name,
      stages: k,
      chosenExitLayer: E,
      layers: results.map((r) => ({
        layer: r.layer,
        lens: r.lens,
        lsq: r.lsq,
        distilled: r.distilled ?? null,
        teacherForced: r.teacher,
        positions: r.positions,
        expectedSpeedup: expectedSpeedup(N, k, r.layer, bestHead(r).acceptance) ?? null,
      })),
    };
    await writeFile(values.json, `${JSON.stringify(json, null, 2)}\n`);
  }
  log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

function collect(
  model: LlamaModel,
  tokenizer: Tokenizer,
  text: string,
  o: { fitRows: number; greedy: number; heldOut: number; heldRows: number; log: (m: string) => void },
): { fit: HiddenDataset; held: HiddenDataset } {
  const split = splitCorpus(text);
  o.log(
    `corpus: ${split.fit.length} paragraphs for fitting, ${split.heldOut.length} held out (the last 15%)`,
  );
  const progress = (label: string) => {
    let last = -1;
    return (done: number, total: number) => {
      const pct = Math.floor((100 * done) / Math.max(total, 1));
      if (Math.floor(pct / 20) > last) {
        last = Math.floor(pct / 20);
        o.log(`${label}: ${done}/${total} positions`);
      }
    };
  };
  const fit = collectHiddenStates(model, tokenizer, split.fit, {
    teacherRows: o.fitRows,
    greedySequences: o.greedy,
    onProgress: progress('hidden states (fit)'),
  });
  const held = collectHiddenStates(model, tokenizer, split.heldOut, {
    teacherRows: o.heldRows,
    greedySequences: o.heldOut,
    onProgress: progress('hidden states (held out)'),
  });
  return { fit, held };
}

function printTable(results: LayerResult[], N: number, k: number, chosen: number): void {
  const pos = results[0]?.positions ?? 0;
  console.log(
    `Greedy agreement with the final layer on held-out text (${pos} positions of greedy continuations of 12-token prefixes):\n`,
  );
  console.log(
    `| exit after layer | logit lens | least squares | distilled (KL + top-1 CE) | teacher-forced (lens / LSQ / distilled) | expected PPSD speedup, k=${k} |`,
  );
  console.log('|---|---|---|---|---|---|');
  for (const r of results) {
    const best = bestHead(r);
    const s = expectedSpeedup(N, k, r.layer, best.acceptance);
    const t = r.teacher;
    console.log(
      `| ${r.layer}${r.layer === chosen ? ' (chosen)' : ''} | ${r.lens.toFixed(3)} | ${r.lsq.toFixed(3)} | ${r.distilled === undefined ? '-' : r.distilled.toFixed(3)} | ${t.lens.toFixed(3)} / ${t.lsq.toFixed(3)} / ${t.distilled === undefined ? '-' : t.distilled.toFixed(3)} | ${s === undefined ? '-' : `${s.toFixed(2)}x (stages ${stageBoundaries(N, k, r.layer).join('-')})`} |`,
    );
  }
  const even = results.filter((r) => N % r.layer === 0);
  if (even.length > 0) {
    console.log(
      `\nWith k = N/E stages (design note): ${even
        .map(
          (r) =>
            `E=${r.layer}, k=${N / r.layer}: ${planSpeedup(
              bestHead(r).acceptance,
              Array.from({ length: N / r.layer + 1 }, (_, j) => j * r.layer),
            ).toFixed(2)}x`,
        )
        .join('; ')}`,
    );
  }
}

const round4 = (x: number) => Math.round(x * 1e4) / 1e4;
