/** Minimal EC2 instance metadata client (IMDSv2: session token first, then token-authenticated GETs). */

export const DEFAULT_IMDS_ENDPOINT = 'http://169.254.169.254';

export interface ImdsOptions {
  /** Base URL (default http://169.254.169.254); tests point it at a local server. */
  endpoint?: string;
  fetch?: typeof fetch;
  tokenTtlSeconds?: number;
  timeoutMs?: number;
}

export interface Imds {
  /** GET /latest/meta-data/<path>; undefined on 404. */
  get(path: string): Promise<string | undefined>;
  instanceId(): Promise<string>;
  region(): Promise<string>;
  /** `InService`, `Warmed:Stopped`, `Terminated`, ... or undefined when the instance is not in an ASG. */
  targetLifecycleState(): Promise<string | undefined>;
}

export class ImdsError extends Error {}

export function createImds(opts: ImdsOptions = {}): Imds {
  const endpoint = (opts.endpoint ?? DEFAULT_IMDS_ENDPOINT).replace(/\/+$/, '');
  const doFetch = opts.fetch ?? fetch;
  const ttl = opts.tokenTtlSeconds ?? 21_600;
  const timeoutMs = opts.timeoutMs ?? 2_000;
  let token: { value: string; expiresAt: number } | null = null;
  let cachedInstanceId: string | null = null;

  async function getToken(force = false): Promise<string> {
    if (!force && token && Date.now() < token.expiresAt) return token.value;
    const res = await doFetch(`${endpoint}/latest/api/token`, {
      method: 'PUT',
      headers: { 'X-aws-ec2-metadata-token-ttl-seconds': String(ttl) },
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) throw new ImdsError(`IMDS token request failed: HTTP ${res.status}`);
    const value = await res.text();
    // Refresh a minute before the token expires.
    token = { value, expiresAt: Date.now() + Math.max(ttl - 60, 1) * 1000 };
    return value;
  }

  async function get(path: string): Promise<string | undefined> {
    const url = `${endpoint}/latest/meta-data/${path.replace(/^\/+/, '')}`;
    for (let attempt = 0; attempt < 2; attempt++) {
      const res = await doFetch(url, {
        headers: { 'X-aws-ec2-metadata-token': await getToken(attempt > 0) },
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (res.status === 401 && attempt === 0) continue; // token expired or revoked: fetch a new one
      if (res.status === 404) return undefined;
      if (!res.ok) throw new ImdsError(`IMDS GET ${path} failed: HTTP ${res.status}`);
      return (await res.text()).trim();
    }
    throw new ImdsError(`IMDS GET ${path} failed: unauthorized`);
  }

  return {
    get,
    async instanceId() {
      if (cachedInstanceId) return cachedInstanceId;
      const id = await get('instance-id');
      if (!id) throw new ImdsError('IMDS has no instance-id');
      cachedInstanceId = id;
      return id;
    },
    async region() {
      const r = await get('placement/region');
      if (!r) throw new ImdsError('IMDS has no placement/region');
      return r;
    },
    targetLifecycleState: () => get('autoscaling/target-lifecycle-state'),
  };
}
