/**
 * The Lua script every writer of a job's event stream uses (workers for start/retry/tokens/terminal, the
 * API for the terminal events it writes itself), registered once per connection with `defineCommand` so
 * Redis runs it by SHA (ioredis falls back to EVAL after a Redis restart flushed the script cache). It
 * touches keys of the job's hash-tag slot only, so it runs unchanged on Redis Cluster.
 */
import type { StreamEvent } from './events';
import { EVENTS_MAX_LEN, EVENTS_TTL_SECONDS, keys } from './keys';
import { progressKeys } from './progress';

/**
 * Append one event to a job's stream and wake readers. KEYS: events stream, progress hash, cancelled
 * flag (expired with the stream at the end). ARGV: event JSON, MAXLEN, wake channel,
 * kind ('start'|'tokens'|'retry'|'terminal'), token end, chars end, attempt, TTL seconds.
 * Returns the entry id, or false when the write was a duplicate (token indexes already published, a
 * start or retry already written for this attempt, or the stream already ended).
 */
export const PUBLISH_EVENT_LUA = `
local events, progress, cancelled = KEYS[1], KEYS[2], KEYS[3]
local kind = ARGV[4]
if redis.call('HGET', progress, 'done') then return false end
if kind == 'tokens' then
  local have = tonumber(redis.call('HGET', progress, 'tokens') or '0')
  if tonumber(ARGV[5]) <= have then return false end
elseif kind == 'start' then
  if redis.call('HGET', progress, 'started') == ARGV[7] then return false end
elseif kind == 'retry' then
  if redis.call('HGET', progress, 'retried') == ARGV[7] then return false end
end
local id = redis.call('XADD', events, 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
if kind == 'tokens' then
  redis.call('HSET', progress, 'tokens', ARGV[5], 'chars', ARGV[6], 'attempt', ARGV[7])
elseif kind == 'start' then
  redis.call('HSET', progress, 'started', ARGV[7], 'attempt', ARGV[7])
elseif kind == 'retry' then
  redis.call('HSET', progress, 'retried', ARGV[7])
else
  redis.call('HSET', progress, 'done', '1', 'attempt', ARGV[7])
  redis.call('EXPIRE', events, ARGV[8])
  redis.call('EXPIRE', progress, ARGV[8])
  redis.call('EXPIRE', cancelled, ARGV[8])
end
redis.call('PUBLISH', ARGV[3], id)
return id
`;

/** What a connection needs to register a script (ioredis' `Redis` fits; the contract does not depend on it). */
export interface ScriptHost {
  defineCommand(name: string, definition: { numberOfKeys: number; lua: string }): void;
}

export interface JobScripts {
  ppsdPublishEvent(...args: (string | number)[]): Promise<string | null>;
}

/** Registers the scripts on a connection once; returns it typed with them. */
export function withJobScripts<R extends ScriptHost>(redis: R): R & JobScripts {
  const r = redis as R & Partial<JobScripts>;
  if (!r.ppsdPublishEvent)
    redis.defineCommand('ppsdPublishEvent', { numberOfKeys: 3, lua: PUBLISH_EVENT_LUA });
  return redis as R & JobScripts;
}

export type PublishKind = 'start' | 'retry' | 'tokens' | 'terminal';

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
    keys.jobEvents(jobId),
    progressKeys.jobProgress(jobId),
    keys.jobCancelled(jobId),
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
