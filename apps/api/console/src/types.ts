/** The admin API's answer shapes, from the contract (types only: nothing of it is bundled). */
export type {
  ApiKeyView,
  ModelStats,
  StatsResponse,
  TenantView,
  UsageReport,
  UsageRow,
} from '@ppsd/contract/admin';

/** POST /admin/tenants/{id}/keys. */
export interface IssuedKeyResponse {
  key: string;
  prefix: string;
  tenant: string;
  createdAt: number;
}
