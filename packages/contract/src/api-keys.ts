/**
 * API key format, storage hash and strength rule, shared by the API (which stores and checks keys), the
 * local stack (which generates its first keys) and the admin CLI (which prints them).
 *
 * - Keys the service issues look like `ppsd_<id>_<secret>` (tenant) or `ppsd_admin_<id>_<secret>` (admin):
 *   `id` is 12 random base-36 characters, drawn separately from the 32-byte base64url `secret`. The public
 *   handle of a key, its `prefix`, is `ppsd_<id>` / `ppsd_admin_<id>`: literally the key's start, and no
 *   part of the secret.
 * - A configured key (PPSD_BOOTSTRAP_KEYS, PPSD_ADMIN_KEYS) in any other format gets a derived prefix,
 *   `cfg_<12 base-32 chars of HMAC(server secret, key)>` (`cfg_admin_…` for admin keys): nothing of the key.
 * - Redis stores, per prefix, HMAC-SHA256(PPSD_KEY_SECRET, key): a dump of Redis without the server
 *   secret cannot be brute-forced, and never holds any part of a secret.
 */
import { createHmac, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';

export type KeyKind = 'tenant' | 'admin';

const ID_LENGTH = 12;
const ISSUED = /^ppsd_(admin_)?([a-z0-9]{12})_[A-Za-z0-9_-]{43}$/;
const BASE36 = 'abcdefghijklmnopqrstuvwxyz0123456789';
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

/** A fresh key: `ppsd_<id>_<secret>` (tenant) or `ppsd_admin_<id>_<secret>` (admin). */
export function generateApiKey(kind: KeyKind = 'tenant'): string {
  let id = '';
  for (let i = 0; i < ID_LENGTH; i++) id += BASE36[randomInt(BASE36.length)];
  return `ppsd_${kind === 'admin' ? 'admin_' : ''}${id}_${randomBytes(32).toString('base64url')}`;
}

/** HMAC-SHA256(server secret, key), hex: what Redis stores for a key. */
export const hashApiKey = (secret: string, key: string): string =>
  createHmac('sha256', secret).update(key, 'utf8').digest('hex');

/** Constant-time comparison of two hex digests. */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/**
 * The public handle of a key: `ppsd_<id>` / `ppsd_admin_<id>` for an issued key of that kind, else
 * `cfg_<derived>` / `cfg_admin_<derived>` (12 base-32 characters of a second HMAC with the server secret).
 */
export function keyPrefix(secret: string, key: string, kind: KeyKind): string {
  const m = ISSUED.exec(key);
  if (m && (m[1] !== undefined) === (kind === 'admin')) return `ppsd_${m[1] ?? ''}${m[2]}`;
  const mac = createHmac('sha256', secret).update(`prefix\0${kind}\0${key}`, 'utf8').digest();
  let id = '';
  for (let i = 0; i < ID_LENGTH; i++) id += BASE32[mac[i] & 31];
  return `cfg_${kind === 'admin' ? 'admin_' : ''}${id}`;
}

/** A prefix as the API accepts it in paths (`DELETE /admin/keys/{prefix}`). */
export const PREFIX_PATTERN = /^(ppsd|cfg)_(admin_)?[a-z0-9]{12}$/;

/** Configured keys and the server secret must be at least this long ... */
export const MIN_KEY_LENGTH = 32;
/** ... and carry at least this many bits by `estimateKeyBits`. */
export const MIN_KEY_BITS = 128;

/**
 * A floor, not a proof: length x the Shannon entropy of the key's own character distribution. Random keys
 * pass easily (`openssl rand -hex 32`: ~240 bits, `openssl rand -base64 32`: ~220, issued keys: ~310);
 * short, repetitive or word-like strings (`sk-acme-test-1`: ~43) do not.
 */
export function estimateKeyBits(key: string): number {
  if (!key) return 0;
  const counts = new Map<string, number>();
  for (const ch of key) counts.set(ch, (counts.get(ch) ?? 0) + 1);
  const n = [...key].length;
  let perChar = 0;
  for (const c of counts.values()) perChar -= (c / n) * Math.log2(c / n);
  return n * perChar;
}

/** Why a configured key (or the server secret) is too weak, or undefined when it is strong enough. */
export function keyWeakness(key: string): string | undefined {
  if (/\s|,/.test(key)) return 'contains whitespace or a comma';
  if (key.length < MIN_KEY_LENGTH)
    return `is ${key.length} characters, at least ${MIN_KEY_LENGTH} are required`;
  const bits = estimateKeyBits(key);
  if (bits < MIN_KEY_BITS)
    return `has about ${Math.floor(bits)} bits of entropy, at least ${MIN_KEY_BITS} are required (use random bytes, e.g. openssl rand -base64 32)`;
  return undefined;
}
