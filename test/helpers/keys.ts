/**
 * Strong, deterministic test keys in the issued format (`ppsd_<id>_<secret>`, the secret a base64url
 * sha256 of the label), so configured-key strength checks pass and tests stay reproducible.
 */
import { createHash } from 'node:crypto';

const secretOf = (label: string) =>
  (
    createHash('sha256').update(label).digest('base64url') +
    createHash('sha256').update(`${label}!`).digest('base64url')
  ).slice(0, 43);

/** `label` (letters/digits) names the key: its id is the label, padded or cut to 12 characters. */
export function testKey(label: string, kind: 'tenant' | 'admin' = 'tenant'): string {
  const id = label
    .toLowerCase()
    .replace(/[^a-z0-9]/g, '')
    .padEnd(12, '0')
    .slice(0, 12);
  return `ppsd_${kind === 'admin' ? 'admin_' : ''}${id}_${secretOf(`${kind}:${label}`)}`;
}

/** A PPSD_KEY_SECRET for tests. */
export const TEST_KEY_SECRET = secretOf('ppsd test key secret');
