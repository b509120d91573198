/**
 * The Lua scripts every writer of a job's event stream uses (workers for start/retry/tokens/terminal, the
 * API for the terminal events it writes itself), registered once per connection with `defineCommand` so
 * Redis runs them by SHA (ioredis falls back to EVAL after a Redis restart flushed the script cache).
 *
 * Both scripts run the same Lua function per event (`PUBLISH_ONE_LUA`), so a write means the same thing
 * whichever carries it: `ppsdPublishEvent` writes one event and touches keys of the job's hash-tag slot
 * only (it runs unchanged on Redis Cluster); `ppsdPublishEvents` writes the events of several jobs in one
 * call, in order, and so spans several slots: it needs one primary holding every key (the service's
 * Redis: a single node, or the ElastiCache replication group with cluster mode off that terraform/
 * deploys). On Cluster a caller would group the writes by slot first.
 */
import type { StreamEvent } from './events';
import { EVENTS_MAX_LEN, EVENTS_TTL_SECONDS, keys } from './keys';
import { progressKeys } from './progress';

/**
 * Append one event to a job's stream and wake readers, unless the write would duplicate: token indexes
 * already published (`tokenEnd` <= progress `tokens`), a start or retry already written for this
 * attempt, or the stream already ended. Returns the entry id, or false for a duplicate.
 * Arguments: events stream, progress hash, cancelled flag (expired with the stream at the end), event
 * JSON, MAXLEN, wake channel, kind ('start'|'tokens'|'retry'|'terminal'), token end, chars end, attempt,
 * TTL seconds.
 */
const PUBLISH_ONE_LUA = `
local function publish(events, progress, cancelled, json, maxlen, wake, kind, tokenEnd, charsEnd, attempt, ttl)
  if redis.call('HGET', progress, 'done') then return false end
  if kind == 'tokens' then
    local have = tonumber(redis.call('HGET', progress, 'tokens') or '0')
    if tonumber(tokenEnd) <= have then return false end
  elseif kind == 'start' then
    if redis.call('HGET', progress, 'started') == attempt then return false end
  elseif kind == 'retry' then
    if redis.call('HGET', progress, 'retried') == attempt then return false end
  end
  local id = redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'e', json)
  if kind == 'tokens' then
    redis.call('HSET', progress, 'tokens', tokenEnd, 'chars', charsEnd, 'attempt', attempt)
  elseif kind == 'start' then
    redis.call('HSET', progress, 'started', attempt, 'attempt', attempt)
  elseif kind == 'retry' then
    redis.call('HSET', progress, 'retried', attempt)
  else
    redis.call('HSET', progress, 'done', '1', 'attempt', attempt)
    redis.call('EXPIRE', events, ttl)
    redis.call('EXPIRE', progress, ttl)
    redis.call('EXPIRE', cancelled, ttl)
  end
  redis.call('PUBLISH', wake, id)
  return id
end
`;

/**
 * One event. KEYS: events stream, progress hash, cancelled flag. ARGV: event JSON, MAXLEN, wake channel,
 * kind, token end, chars end, attempt, TTL seconds. Returns the entry id, or false for a duplicate.
 */
export const PUBLISH_EVENT_LUA = `${PUBLISH_ONE_LUA}
return publish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
`;

/** ARGV entries per event of `PUBLISH_EVENTS_LUA` (after its two shared ones). */
const ARGS_PER_EVENT = 6;
/** KEYS per event of `PUBLISH_EVENTS_LUA`. */
const KEYS_PER_EVENT = 3;

/**
 * Several events (of one or several jobs) in one call, written in the order given. KEYS: per event its
 * events stream, progress hash, cancelled flag. ARGV: MAXLEN, TTL seconds, then per event its JSON, wake
 * channel, kind, token end, chars end, attempt. Returns one entry per event: its id, or false (nil in
 * the reply) for a duplicate; a later event of the same job sees what an earlier one of the call wrote.
 */
export const PUBLISH_EVENTS_LUA = `${PUBLISH_ONE_LUA}
local out = {}
for i = 0, #KEYS / ${KEYS_PER_EVENT} - 1 do
  local k, a = i * ${KEYS_PER_EVENT}, 2 + i * ${ARGS_PER_EVENT}
  out[i + 1] = publish(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a + 1], ARGV[1], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[2])
end
return out
`;

/** What a connection needs to register a script (ioredis' `Redis` fits; the contract does not depend on it). */
export interface ScriptHost {
  defineCommand(name: string, definition: { numberOfKeys?: number; lua: string }): void;
}

export interface JobScripts {
  ppsdPublishEvent(...args: (string | number)[]): Promise<string | null>;
  /** First argument: the number of keys (3 per event). */
  ppsdPublishEvents(...args: (string | number)[]): Promise<(string | null)[]>;
}

/** Registers the scripts on a connection once; returns it typed with them. */
export function withJobScripts<R extends ScriptHost>(redis: R): R & JobScripts {
  const r = redis as R & Partial<JobScripts>;
  if (!r.ppsdPublishEvent)
    redis.defineCommand('ppsdPublishEvent', { numberOfKeys: KEYS_PER_EVENT, lua: PUBLISH_EVENT_LUA });
  // no numberOfKeys: the call says how many (3 per event)
  if (!r.ppsdPublishEvents) redis.defineCommand('ppsdPublishEvents', { lua: PUBLISH_EVENTS_LUA });
  return redis as R & JobScripts;
}

export type PublishKind = 'start' | 'retry' | 'tokens' | 'terminal';

/** One event to append to one job's stream (`publishJobEvents`). */
export interface JobEventWrite {
  jobId: string;
  event: StreamEvent;
  kind: PublishKind;
  attempt: number;
  /** tokens: index after the event's last token; the write is skipped unless it is past what is published. */
  tokenEnd?: number;
  /** tokens: text length published once this event is in. */
  charsEnd?: number;
}

const jobKeys = (jobId: string): string[] => [
  keys.jobEvents(jobId),
  progressKeys.jobProgress(jobId),
  keys.jobCancelled(jobId),
];

/**
 * Appends `event` to the job's stream unless it is a duplicate (see the script); wakes its readers.
 * Returns the entry id, or null for a duplicate or a stream that already ended.
 */
export function publishJobEvent(
  redis: JobScripts,
  jobId: string,
  event: StreamEvent,
  kind: PublishKind,
  o: { attempt: number; tokenEnd?: number; charsEnd?: number },
): Promise<string | null> {
  return redis.ppsdPublishEvent(
    ...jobKeys(jobId),
    JSON.stringify(event),
    EVENTS_MAX_LEN,
    keys.jobWake(jobId),
    kind,
    o.tokenEnd ?? 0,
    o.charsEnd ?? 0,
    o.attempt,
    EVENTS_TTL_SECONDS,
  );
}

/**
 * Writes several events, of one job or several, in one Redis call (one script run), in the order given,
 * each exactly as `publishJobEvent` would. Returns one result per write: its entry id, or null for a
 * duplicate or a stream that already ended.
 */
export async function publishJobEvents(
  redis: JobScripts,
  writes: readonly JobEventWrite[],
): Promise<(string | null)[]> {
  if (writes.length === 0) return [];
  const keyArgs: string[] = [];
  const args: (string | number)[] = [EVENTS_MAX_LEN, EVENTS_TTL_SECONDS];
  for (const w of writes) {
    keyArgs.push(...jobKeys(w.jobId));
    args.push(
      JSON.stringify(w.event),
      keys.jobWake(w.jobId),
      w.kind,
      w.tokenEnd ?? 0,
      w.charsEnd ?? 0,
      w.attempt,
    );
  }
  const ids = await redis.ppsdPublishEvents(keyArgs.length, ...keyArgs, ...args);
  // Redis answers a Lua false as nil
  return writes.map((_, i) => ids[i] ?? null);
}
