import { acceptanceRate, DECODER_NAMES, type DecoderName, meanAcceptedLength } from '../../decode/decoder';
import { Engine } from '../../engine';
import type { Device } from '../../runtime';
import { numberFlag, parseCommandArgs, UsageError } from '../args';

const help = `usage: ppsd generate <package> --prompt TEXT [options]

  --prompt TEXT         prompt text (default: empty, i.e. start from BOS)
  --max-tokens N        tokens to generate (default 256)
  --temperature T       0 = greedy (default 0)
  --top-p P             nucleus sampling mass (default 1)
  --seed S              sampling seed (default 0): same seed, same text
  --stop STR            stop sequence (repeatable)
  --decoder NAME        ${DECODER_NAMES.join(' | ')} (default ar)
  --stages K            pipeline stages for ppsd/spd/eesd (default 2)
  --exit-layer E        early-exit layer (default: layers / stages)
  --devices LIST        device per stage, e.g. cpu,cpu or cuda:0,cuda:1 (default: cpu per stage)
  --threads N           ORT intra-op threads per stage (default 1)
  --json                print one JSON object instead of streaming text`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(
    argv,
    {
      prompt: { type: 'string', default: '' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      decoder: { type: 'string', default: 'ar' },
      stages: { type: 'string' },
      'exit-layer': { type: 'string' },
      devices: { type: 'string' },
      threads: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
    help,
  );
  const [packageDir] = positionals;
  if (!packageDir) throw new UsageError(`a package directory is required\n\n${help}`);
  const decoder = values.decoder as DecoderName;
  if (!DECODER_NAMES.includes(decoder))
    throw new UsageError(`--decoder must be one of ${DECODER_NAMES.join(', ')}`);
  const stages = numberFlag(values.stages, 'stages', 2);
  const devices = values.devices
    ? (values.devices.split(',').map((d) => d.trim()) as Device[])
    : (Array.from({ length: decoder === 'ar' ? 1 : stages }, () => 'cpu') as Device[]);

  const engine = await Engine.open(packageDir, {
    decoder,
    devices,
    stages,
    exitLayer:
      values['exit-layer'] === undefined ? undefined : numberFlag(values['exit-layer'], 'exit-layer'),
    threadsPerStage: numberFlag(values.threads, 'threads', 1),
    log: (m) => console.error(`[ppsd] ${m}`),
  });
  const abort = new AbortController();
  process.once('SIGINT', () => abort.abort());
  try {
    const result = await engine.generate(
      values.prompt,
      {
        maxTokens: numberFlag(values['max-tokens'], 'max-tokens', 256),
        temperature: numberFlag(values.temperature, 'temperature', 0),
        topP: numberFlag(values['top-p'], 'top-p', 1),
        seed: numberFlag(values.seed, 'seed', 0),
        stop: values.stop ?? [],
        signal: abort.signal,
      },
      values.json ? undefined : (ev) => void process.stdout.write(ev.text),
    );
    if (values.json) {
      const { stats } = result;
      console.log(
        JSON.stringify({
          text: result.text,
          tokens: result.tokens,
          prompt_tokens: result.promptTokens,
          completion_tokens: result.completionTokens,
          finish_reason: result.finishReason,
          decoder: stats.decoder,
          speculation: {
            ...stats,
            acceptance_rate: acceptanceRate(stats),
            mean_accepted_length: meanAcceptedLength(stats),
          },
          timings: {
            first_token_ms: result.timings.firstTokenMs,
            total_ms: result.timings.totalMs,
            tokens_per_second: result.timings.tokensPerSecond,
          },
        }),
      );
    } else {
      if (process.stdout.isTTY) process.stdout.write('\n'); // piped output is exactly the generated text
      const t = result.timings;
      console.error(
        `[ppsd] ${result.completionTokens} tokens, ${t.tokensPerSecond.toFixed(1)} tok/s, first token ${t.firstTokenMs.toFixed(1)} ms, ${result.finishReason}`,
      );
    }
  } finally {
    await engine.close();
  }
}
