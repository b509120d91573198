/**
 * First-run tenants and keys: PPSD_BOOTSTRAP_KEYS="acme:KEY1,globex:KEY2" registers each key for its
 * tenant (idempotent; a revoked key stays revoked). With none given and no active key at all, one tenant
 * ('default') and a random key are created and the key is printed once.
 */
import type { TenantStore } from './adapters/tenants';
import type { BootstrapKey } from './config';

export interface BootstrapResult {
  added: string[];
  created?: { tenant: string; key: string };
}

export async function bootstrapKeys(
  tenants: TenantStore,
  keys: BootstrapKey[],
  log: (msg: string) => void = (m) => console.log(m),
): Promise<BootstrapResult> {
  const added: string[] = [];
  for (const { tenant, key } of keys) {
    if (await tenants.addKey(tenant, key)) added.push(tenant);
  }
  if (added.length) log(`[api] bootstrap: registered keys for ${added.join(', ')}`);
  if (keys.length > 0 || (await tenants.countActiveKeys()) > 0) return { added };
  const tenant = 'default';
  const key = await tenants.createKey(tenant);
  log(`[api] bootstrap: no API keys configured; created tenant '${tenant}' with key:\n${key}`);
  return { added, created: { tenant, key } };
}
