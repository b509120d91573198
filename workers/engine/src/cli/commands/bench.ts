/**
 * `ppsd bench <package> [options]`: the decoders side by side, interleaved, in one process, greedy, on
 * prompts from a file; JSON with every run plus a table of tokens/s, acceptance, speedup over both AR
 * baselines (one core; all the cores the pipeline uses), ideal speedup and efficiency.
 * `ppsd bench --report a.json,b.json` rewrites the decoder-benchmark section of docs/BENCHMARKS.md and
 * the speedup-vs-alpha chart from saved results.
 */
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { anchorTable, llamaCppAnchor, medianLength } from '../../bench/anchor';
import { writeBenchDocs } from '../../bench/docs';
import { type BenchDecoder, runHarness } from '../../bench/harness';
import { markdownTable, summarize } from '../../bench/report';
import { poolProbes, probeStages, type StageProbe } from '../../bench/stage-probe';
import type { Decoder, DecoderName } from '../../decode/decoder';
import { createDecoder, DECODER_NAMES, defaultSkipSet, type StageSplit } from '../../decode/index';
import { costOptionsFor, PipelineDecoder, sublayerSplit } from '../../decode/pipeline';
import { resolveSetup } from '../../decoder-setup';
import { loadPackage } from '../../package';
import { numberFlag, parseCommandArgs, UsageError } from '../args';

const REPO = path.resolve(import.meta.dirname, '../../../../..');

const HELP = `usage: ppsd bench <package> [options]
       ppsd bench --report <results.json,...> [--docs docs/BENCHMARKS.md] [--chart docs/img/speedup-vs-alpha.svg]

Runs AR on one core, AR on all the pipeline's cores, and the speculative decoders round-robin on the
same prompts (greedy), and reports tokens/s, acceptance, speedup, ideal speedup and efficiency.

options:
  --prompts FILE       one prompt per line (default prompts/bench-prompts.txt)
  --decoders LIST      comma-separated from ar,eesd,dv,ppsd,spd (default all; 'ar' = both AR baselines)
  --stages k           pipeline stages (default 2); AR "all cores" gets k intra-op threads
  --exit-layer E       exit layer (default: the package's best stored head for the plan, else the plan's first boundary)
  --split MODE         pipeline boundaries: balanced (equal modelled cost per stage, heads included; default) or equal (layer counts)
  --whole-layers       PPSD: never split inside a layer (default: k = 2 with the logit lens may run one layer's
                       attention in stage 1 and its MLP in stage 2 when that balances the stages better)
  --draft-vocab N      rows of PPSD's draft head: the N most frequent tokens of the corpus (default 4096 for
                       vocabularies >= 16k, else the whole vocabulary; 0 = the whole vocabulary)
  --max-tokens N       tokens per generation (default 64)
  --prompt-count N     use the first N prompts (default all)
  --repeats R          rounds over all prompts (default 3); medians over rounds
  --alpha LIST         controlled acceptance, e.g. 0.5,0.7,0.8,0.9 (random-weight models; labelled as such)
  --json FILE          write every run and the summary as JSON
  --markdown           print the table as markdown (default: also printed)
  --max-seq N          KV cache size for the sessions (default min(model, 512))
  --llamacpp GGUF      also run llama.cpp's AR (llama-bench, built once from the source node-llama-cpp bundles)
                       on this GGUF (the package's own file, e.g. from ppsd export-gguf) at 1 and k threads,
                       before and after the decoders, and report each decoder against it at the same thread
                       budget (AR-1core, EESD, DV: 1 thread; AR-all-cores, PPSD, SPD: k)
  --no-probe           skip the stage probe (before and after the runs, each pipeline's stages timed alone, all
                       looping at once and in lockstep: the tick floor and efficiency ceiling the machine
                       allows, reported as "ceiling")`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(
    argv,
    {
      prompts: { type: 'string' },
      decoders: { type: 'string' },
      stages: { type: 'string' },
      'exit-layer': { type: 'string' },
      split: { type: 'string' },
      'draft-vocab': { type: 'string' },
      'whole-layers': { type: 'boolean' },
      'max-tokens': { type: 'string' },
      'prompt-count': { type: 'string' },
      repeats: { type: 'string' },
      alpha: { type: 'string' },
      json: { type: 'string' },
      markdown: { type: 'boolean' },
      'max-seq': { type: 'string' },
      'no-probe': { type: 'boolean' },
      llamacpp: { type: 'string' },
      report: { type: 'string' },
      docs: { type: 'string' },
      chart: { type: 'string' },
    },
    HELP,
  );
  const log = (msg: string) => process.stderr.write(`bench: ${msg}\n`);
  if (values.report) {
    const files = values.report.split(',').filter(Boolean);
    const docs = values.docs ?? path.join(REPO, 'docs/BENCHMARKS.md');
    const chart = values.chart ?? path.join(REPO, 'docs/img/speedup-vs-alpha.svg');
    await writeBenchDocs(files, docs, chart);
    log(`updated ${docs} and ${chart}`);
    return;
  }
  if (positionals.length !== 1) throw new UsageError(`expected one package folder\n\n${HELP}`);
  const dir = positionals[0];
  const k = numberFlag(values.stages, 'stages', 2);
  const maxTokens = numberFlag(values['max-tokens'], 'max-tokens', 64);
  const repeats = numberFlag(values.repeats, 'repeats', 3);
  const alphas = (values.alpha ?? '')
    .split(',')
    .filter(Boolean)
    .map((a) => numberFlag(a, 'alpha'));
  if (alphas.some((a) => !(a >= 0 && a <= 1))) throw new UsageError('--alpha values must lie in [0, 1]');
  const names = (values.decoders ?? DECODER_NAMES.join(',')).split(',').filter(Boolean) as DecoderName[];
  for (const n of names) if (!DECODER_NAMES.includes(n)) throw new UsageError(`unknown decoder '${n}'`);
  const promptFile = values.prompts ?? path.join(REPO, 'prompts/bench-prompts.txt');
  let prompts = (await readFile(promptFile, 'utf8'))
    .split('\n')
    .map((s) => s.trim())
    .filter((s) => s.length > 0 && !s.startsWith('#'));
  if (values['prompt-count']) prompts = prompts.slice(0, numberFlag(values['prompt-count'], 'prompt-count'));
  if (prompts.length === 0) throw new UsageError(`no prompts in ${promptFile}`);

  log(`loading ${dir}`);
  const pkg = await loadPackage(dir);
  const { model, tokenizer, manifest } = pkg;
  const N = model.config.nLayers;
  if (!Number.isInteger(k) || k < 2 || k > N)
    throw new UsageError(`--stages must be an integer in [2, ${N}]`);
  const split = (values.split ?? 'balanced') as StageSplit;
  if (split !== 'balanced' && split !== 'equal') throw new UsageError('--split must be balanced or equal');
  const dvRows = values['draft-vocab'] ? numberFlag(values['draft-vocab'], 'draft-vocab') : undefined;
  const setup = await resolveSetup(
    pkg,
    k,
    values['exit-layer'] ? numberFlag(values['exit-layer'], 'exit-layer') : undefined,
    { split, draftRows: dvRows === 0 ? model.config.vocabSize : dvRows },
  );
  const skipSet = setup.skipSet ?? defaultSkipSet(N);
  // PPSD's own plan may split inside a layer (k = 2, logit lens, balanced): say so
  const ppsdSplitLayer =
    !values['whole-layers'] && split === 'balanced' && !setup.exitHead.affine
      ? sublayerSplit(model.config, k, { draftRows: setup.draftRows, ...costOptionsFor(model) })
      : undefined;
  const ppsdSplitInfo =
    ppsdSplitLayer === undefined
      ? ''
      : ` PPSD splits inside layer ${ppsdSplitLayer} (its attention ends stage 1, where the exit reads the hidden state; its MLP starts stage 2).`;
  const encoded = prompts.map((p) => Int32Array.from(tokenizer.encodePrompt(p)));
  const longest = Math.max(...encoded.map((p) => p.length));
  const maxSeqLen = numberFlag(
    values['max-seq'],
    'max-seq',
    Math.min(model.config.maxSeqLen, Math.max(512, longest + maxTokens + 8)),
  );
  if (longest + maxTokens > maxSeqLen)
    throw new UsageError(`prompt (${longest}) + max tokens (${maxTokens}) exceed --max-seq ${maxSeqLen}`);
  if (alphas.length > 0 && !manifest.synthetic) {
    log('note: controlled acceptance on a model with real weights; results are labelled controlled');
  }
  log(
    `plan: k=${k}, ${split} split, stages [${setup.boundaries.join(', ')}] (modelled MACs ${setup.stageMacs.map((m) => (m / 1e6).toFixed(2)).join(' / ')}M, full forward ${(setup.forwardMacs / 1e6).toFixed(2)}M), ${setup.exitHeadInfo}; PPSD draft head: ${setup.draftVocabInfo};${ppsdSplitInfo} SPD: ${setup.spdDrafterInfo}; DV skip set ${JSON.stringify(skipSet)}${setup.skipSet ? ' (tuned)' : ' (default)'}`,
  );

  const decoders: BenchDecoder[] = [];
  const opened: Decoder[] = [];
  try {
    const make = async (label: string, name: DecoderName, extra: { threadsPerStage?: number } = {}) => {
      log(`opening ${label}`);
      const d = await createDecoder(name, {
        model,
        stages: k,
        exitLayer: setup.exitLayer,
        exitHead: setup.exitHead,
        draftVocab: setup.draftVocab,
        split,
        sublayer: !values['whole-layers'],
        skipSet,
        spdDrafter: setup.spdDrafter,
        threadsPerStage: extra.threadsPerStage ?? 1,
        maxSeqLen,
        log,
      });
      opened.push(d);
      decoders.push({ label, decoder: d, speculative: name !== 'ar' });
    };
    await make('ar-1core', 'ar');
    if (names.includes('ar')) await make('ar-all-cores', 'ar', { threadsPerStage: k });
    for (const n of names) if (n !== 'ar') await make(n, n);

    const loadBefore = os.loadavg();
    const t0 = performance.now();
    // The stage probe runs before and after the decoders (pooled), so a machine whose speed drifts during
    // the benchmark is probed under both conditions.
    const probe = async (when: string): Promise<Record<string, StageProbe>> => {
      const out: Record<string, StageProbe> = {};
      if (values['no-probe']) return out;
      for (const d of decoders) {
        if (!(d.decoder instanceof PipelineDecoder)) continue;
        log(`probing ${d.label}'s stages ${when}: each alone, all looping at once, and in lockstep`);
        const p = await probeStages(d.decoder.stageWorkers, { dim: model.config.dim, rounds: 2 });
        const ms = (v: number[]) => v.map((x) => x.toFixed(2)).join(' / ');
        log(
          `${d.label}: alone ${ms(p.aloneMs)} ms, together ${ms(p.togetherMs)} ms, lockstep ${ms(p.lockstepMs)} ms`,
        );
        out[d.label] = p;
      }
      return out;
    };
    const anchor = values.llamacpp
      ? await llamaCppAnchor(path.resolve(values.llamacpp), [1, k], maxTokens, medianLength(encoded), log)
      : undefined;
    const before = await probe('before the runs');
    const records = await runHarness(decoders, { prompts: encoded, maxTokens, repeats, alphas, log });
    const after = await probe('after the runs');
    await anchor?.sample('after the decoders');
    const probes: Record<string, StageProbe> = {};
    for (const label of Object.keys(after)) probes[label] = poolProbes(before[label], after[label]);
    const wallS = (performance.now() - t0) / 1000;
    const summaries = summarize(records, {
      config: model.config,
      stages: k,
      boundaries: setup.boundaries,
      exitLayer: setup.exitLayer,
      skipSet,
      probes,
    });
    const table = markdownTable(summaries, { controlled: alphas.length > 0 });
    const meta = {
      ...(anchor ? { llamacpp: anchor.result() } : {}),
      package: manifest.name,
      dtype: manifest.dtype,
      synthetic: !!manifest.synthetic,
      config: model.config,
      acceptanceMode: alphas.length > 0 ? 'controlled' : 'real',
      alphas,
      stages: k,
      boundaries: setup.boundaries,
      exitLayer: setup.exitLayer,
      exitHead: setup.exitHeadInfo,
      split,
      ppsdSplitLayer: ppsdSplitLayer ?? null,
      draftVocab: setup.draftVocabInfo,
      draftRows: setup.draftRows,
      stageMacs: setup.stageMacs,
      forwardMacs: setup.forwardMacs,
      spdDrafter: setup.spdDrafterInfo,
      skipSet,
      skipSetSource: setup.skipSet ? 'tuned (ppsd tune-skip)' : 'default (decode/dv.ts defaultSkipSet)',
      prompts,
      promptTokens: encoded.map((p) => p.length),
      maxTokens,
      repeats,
      machine: {
        cpu: os.cpus()[0]?.model,
        cores: os.cpus().length,
        loadavgBefore: loadBefore,
        loadavgAfter: os.loadavg(),
      },
      node: process.version,
      date: new Date().toISOString(),
      wallSeconds: Math.round(wallS),
      command: `ppsd bench ${argv.join(' ')}`,
      timing:
        'tokens/s = (tokens - 1) / time from the first to the last token (prefill excluded); medians over repeats of all prompts pooled',
    };
    if (values.json) {
      await writeFile(values.json, `${JSON.stringify({ meta, summaries, probes, records }, null, 1)}\n`);
      log(`wrote ${values.json}`);
    }
    console.log(
      `${alphas.length > 0 ? 'Controlled acceptance (drafts replaced by the AR token with probability alpha; drafters still run in full)' : 'Real acceptance'} - ${manifest.name} (${manifest.dtype}), k=${k}, stages [${setup.boundaries.join(', ')}], ${split} split, PPSD draft head ${setup.draftRows} rows, ${maxTokens} tokens x ${prompts.length} prompts x ${repeats} repeats\n`,
    );
    console.log(table);
    if (anchor) console.log(`\n${anchorTable(summaries, anchor.result(), k)}`);
    const bad = summaries.filter((s) => !s.lossless);
    if (bad.length > 0) log(`WARNING: output differs from AR for ${bad.map((s) => s.label).join(', ')}`);
    log(
      `done in ${wallS.toFixed(0)} s (load average before ${loadBefore.map((x) => x.toFixed(2)).join(' ')}, after ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')})`,
    );
  } finally {
    await Promise.allSettled(opened.map((d) => d.close()));
  }
}
