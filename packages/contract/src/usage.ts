import type { DecoderName, FinishReason } from './job';

/** One record per job attempt, written by the worker on every end state. */
export interface UsageRecord {
  tenant: string;
  jobId: string;
  attempt: number;
  model: string;
  status: 'completed' | 'failed' | 'cancelled' | 'timed_out';
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number; // verified tokens only
  draftTokensProposed: number;
  draftTokensAccepted: number;
  decoder: DecoderName;
  wallMs: number;
  deviceSeconds: number; // wall time x devices (pipeline stages) held
  endedAt: number; // ms epoch
}

export const encodeUsage = (record: UsageRecord): [string, string] => ['u', JSON.stringify(record)];

export function decodeUsage(fields: string[]): UsageRecord {
  const at = fields.indexOf('u');
  if (at < 0) throw new Error('usage entry without a record field');
  return JSON.parse(fields[at + 1]) as UsageRecord;
}

export interface UsageTotals {
  jobs: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  draft_tokens_proposed: number;
  draft_tokens_accepted: number;
  device_seconds: number;
}

export function sumUsage(records: UsageRecord[]): UsageTotals {
  const jobs = new Set(records.map((r) => r.jobId));
  const t: UsageTotals = {
    jobs: jobs.size,
    prompt_tokens: 0,
    completion_tokens: 0,
    total_tokens: 0,
    draft_tokens_proposed: 0,
    draft_tokens_accepted: 0,
    device_seconds: 0,
  };
  for (const r of records) {
    t.prompt_tokens += r.promptTokens;
    t.completion_tokens += r.completionTokens;
    t.draft_tokens_proposed += r.draftTokensProposed;
    t.draft_tokens_accepted += r.draftTokensAccepted;
    t.device_seconds += r.deviceSeconds;
  }
  t.total_tokens = t.prompt_tokens + t.completion_tokens;
  return t;
}
