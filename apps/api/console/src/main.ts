/**
 * The ppsd web console: a playground (stream a completion or chat; each token marked accepted draft or
 * verified-only from the stream's `ppsd` extension; acceptance, tokens/s and usage at the end) and, with
 * an admin key, operator views (tenants and keys, usage per tenant over time, live queues, workers and
 * counters). Plain DOM, no framework; the keys live in localStorage and go only to this origin.
 */
import type { TokenSegment } from '@ppsd/contract';
import type { FinishExtension } from '../../src/stream-extension';
import type {
  ApiKeyView,
  IssuedKeyResponse,
  ModelStats,
  StatsResponse,
  TenantView,
  UsageReport,
  UsageRow,
} from './types';

// ---- small DOM helpers ----

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<Record<string, string>> = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function table(target: HTMLTableElement, columns: string[], rows: (Node | string | number)[][]): void {
  target.replaceChildren(
    el('thead', {}, el('tr', {}, ...columns.map((c) => el('th', { text: c })))),
    el(
      'tbody',
      {},
      ...rows.map((r) => el('tr', {}, ...r.map((v) => el('td', {}, typeof v === 'number' ? String(v) : v)))),
    ),
  );
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
const when = (ms?: number) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '');

function showError(err: unknown): void {
  const p = $('error');
  p.textContent = err instanceof Error ? err.message : String(err);
  p.hidden = false;
}
const clearError = () => {
  $('error').hidden = true;
};

// ---- keys (browser only) ----

const store = {
  get api() {
    return localStorage.getItem('ppsd.apiKey') ?? '';
  },
  get admin() {
    return localStorage.getItem('ppsd.adminKey') ?? '';
  },
  save(api: string, admin: string) {
    localStorage.setItem('ppsd.apiKey', api);
    localStorage.setItem('ppsd.adminKey', admin);
  },
  forget() {
    localStorage.removeItem('ppsd.apiKey');
    localStorage.removeItem('ppsd.adminKey');
  },
};

async function request(path: string, key: string, init: RequestInit = {}): Promise<Response> {
  if (!key)
    throw new Error(`Enter ${path.startsWith('/admin/') ? 'an admin key' : 'an API key'} above first.`);
  const res = await fetch(path, {
    ...init,
    headers: {
      Authorization: `Bearer ${key}`,
      ...(init.body ? { 'Content-Type': 'application/json' } : {}),
      ...init.headers,
    },
  });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      message = `${res.status}: ${((await res.json()) as { error: { message: string } }).error.message}`;
    } catch {}
    throw new Error(`${init.method ?? 'GET'} ${path}: ${message}`);
  }
  return res;
}
const api = async <T>(path: string, init?: RequestInit) =>
  (await (await request(path, store.api, init)).json()) as T;
const admin = async <T>(path: string, init?: RequestInit) =>
  (await (await request(path, store.admin, init)).json()) as T;

// ---- views ----

type View = 'playground' | 'tenants' | 'usage' | 'live';
let liveTimer: number | undefined;

function show(view: View): void {
  clearError();
  for (const b of document.querySelectorAll<HTMLButtonElement>('nav button'))
    b.classList.toggle('active', b.dataset.view === view);
  for (const s of document.querySelectorAll<HTMLElement>('.view')) s.hidden = s.id !== `view-${view}`;
  clearInterval(liveTimer);
  const load: Record<View, () => Promise<void>> = {
    playground: loadModels,
    tenants: loadTenants,
    usage: loadUsage,
    live: startLive,
  };
  document.body.dataset.view = view;
  load[view]().catch(showError);
}

// ---- playground ----

async function loadModels(): Promise<void> {
  if (!store.api) return;
  const select = $<HTMLSelectElement>('model');
  const current = select.value;
  const { data } = await api<{ data: { id: string }[] }>('/v1/models');
  select.replaceChildren(...data.map((m) => el('option', { value: m.id, text: m.id })));
  if (data.some((m) => m.id === current)) select.value = current;
}

/** Parses an SSE body into its `data:` payloads as they arrive. */
async function* sse(res: Response): AsyncGenerator<string> {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    for (let cut = buf.indexOf('\n\n'); cut >= 0; cut = buf.indexOf('\n\n')) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data: '))
        .map((l) => l.slice(6))
        .join('\n');
      if (data) yield data;
    }
  }
}

let running: AbortController | undefined;

async function generate(ev: Event): Promise<void> {
  ev.preventDefault();
  clearError();
  const out = $('output');
  const stats = $('run-stats');
  out.replaceChildren();
  stats.replaceChildren();
  delete out.dataset.done;
  const chat = $<HTMLSelectElement>('mode').value === 'chat';
  const decoder = $<HTMLSelectElement>('decoder').value;
  const prompt = $<HTMLTextAreaElement>('prompt').value;
  const body = {
    model: $<HTMLSelectElement>('model').value,
    ...(chat ? { messages: [{ role: 'user', content: prompt }] } : { prompt }),
    max_tokens: Number($<HTMLInputElement>('max-tokens').value),
    temperature: Number($<HTMLInputElement>('temperature').value),
    stream: true,
    stream_options: { include_usage: true },
    speculation: decoder === 'auto' ? 'auto' : decoder === 'ar' ? 'off' : { decoder },
  };
  running = new AbortController();
  $<HTMLButtonElement>('run').disabled = true;
  $<HTMLButtonElement>('stop').disabled = false;
  const started = performance.now();
  let firstAt = 0;
  let finish: FinishExtension | undefined;
  let usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | undefined;
  let finishReason = '';
  try {
    const res = await request(chat ? '/v1/chat/completions' : '/v1/completions', store.api, {
      method: 'POST',
      body: JSON.stringify(body),
      signal: running.signal,
    });
    for await (const data of sse(res)) {
      if (data === '[DONE]') break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      const text: string = chat ? (choice.delta?.content ?? '') : (choice.text ?? '');
      const segments: TokenSegment[] = chunk.ppsd?.segments ?? (text ? [{ text, draft: false }] : []);
      if (text && !firstAt) firstAt = performance.now();
      for (const s of segments)
        out.append(el('span', { class: `tok ${s.draft ? 'draft' : 'verified'}`, text: s.text }));
      if (choice.finish_reason) {
        finishReason = choice.finish_reason;
        finish = chunk.ppsd;
      }
    }
    out.dataset.done = '1';
    const seconds = (performance.now() - started) / 1000;
    const items: [string, string][] = [
      ['finish', finishReason],
      ['decoder', finish?.decoder ?? '?'],
      [
        'acceptance',
        finish && finish.draft_tokens_proposed > 0
          ? `${fmt(finish.acceptance_rate * 100, 1)}% (${finish.draft_tokens_accepted}/${finish.draft_tokens_proposed})`
          : 'no drafts',
      ],
      ['tokens/s', finish ? fmt(finish.tokens_per_second, 1) : '?'],
      ['time to first token', firstAt ? `${fmt(firstAt - started)} ms` : '-'],
      ['wall', `${fmt(seconds, 2)} s`],
      [
        'usage',
        usage
          ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens}`
          : '?',
      ],
    ];
    stats.replaceChildren(
      ...items.map(([k, v]) => el('span', { 'data-stat': k }, `${k}: `, el('b', { text: v }))),
    );
  } catch (err) {
    if ((err as Error).name !== 'AbortError') showError(err);
  } finally {
    $<HTMLButtonElement>('run').disabled = false;
    $<HTMLButtonElement>('stop').disabled = true;
    running = undefined;
  }
}

// ---- tenants and keys ----

async function loadTenants(): Promise<void> {
  const [tenants, keyList] = await Promise.all([
    admin<{ data: TenantView[] }>('/admin/tenants'),
    admin<{ data: ApiKeyView[] }>('/admin/keys'),
  ]);
  table(
    $<HTMLTableElement>('tenants-table'),
    ['tenant', 'status', 'keys', 'models', 'token quota', 'job limit', 'used', 'unfinished', ''],
    tenants.data.map((t) => [
      t.id,
      t.disabled ? 'disabled' : 'active',
      t.active_keys,
      t.models ? t.models.join(', ') || '(none)' : 'all',
      t.token_quota ?? `default (${t.effective.token_quota || 'unlimited'})`,
      t.job_limit ?? `default (${t.effective.job_limit || 'unlimited'})`,
      t.used_tokens,
      t.unfinished_jobs,
      el(
        'span',
        {},
        el('button', { type: 'button', 'data-issue': t.id, text: 'Issue key' }),
        ' ',
        el('button', {
          type: 'button',
          'data-toggle': t.id,
          'data-disabled': t.disabled ? '1' : '0',
          text: t.disabled ? 'Enable' : 'Disable',
        }),
      ),
    ]),
  );
  table(
    $<HTMLTableElement>('keys-table'),
    ['prefix', 'tenant', 'status', 'source', 'created', 'by', 'revoked', ''],
    keyList.data.map((k) => [
      el('code', { text: k.prefix }),
      k.tenant,
      k.active ? 'active' : 'revoked',
      k.source,
      when(k.createdAt),
      k.createdBy ?? '',
      k.revokedAt ? `${when(k.revokedAt)} by ${k.revokedBy ?? '?'}` : '',
      k.active ? el('button', { type: 'button', 'data-revoke': k.prefix, text: 'Revoke' }) : '',
    ]),
  );
  const sel = $<HTMLSelectElement>('usage-tenant');
  const current = sel.value;
  sel.replaceChildren(
    el('option', { value: '', text: 'all' }),
    ...tenants.data.map((t) => el('option', { value: t.id, text: t.id })),
  );
  sel.value = current;
}

async function onTenantsClick(ev: MouseEvent): Promise<void> {
  const b = (ev.target as HTMLElement).closest('button');
  if (!b) return;
  if (b.dataset.issue) {
    const k = await admin<IssuedKeyResponse>(`/admin/tenants/${encodeURIComponent(b.dataset.issue)}/keys`, {
      method: 'POST',
    });
    $('issued-tenant').textContent = k.tenant;
    $('new-key').textContent = k.key;
    $('issued').hidden = false;
  } else if (b.dataset.revoke) {
    await admin(`/admin/keys/${encodeURIComponent(b.dataset.revoke)}`, { method: 'DELETE' });
  } else if (b.dataset.toggle) {
    await admin(`/admin/tenants/${encodeURIComponent(b.dataset.toggle)}`, {
      method: 'PATCH',
      body: JSON.stringify({ disabled: b.dataset.disabled !== '1' }),
    });
  } else return;
  await loadTenants();
}

async function createTenant(ev: Event): Promise<void> {
  ev.preventDefault();
  const id = $<HTMLInputElement>('tenant-id').value.trim();
  await admin('/admin/tenants', { method: 'POST', body: JSON.stringify({ id }) });
  $<HTMLInputElement>('tenant-id').value = '';
  await loadTenants();
}

// ---- usage ----

const PALETTE = ['#2f5fd0', '#2e8b4a', '#c77a16', '#a23b9b', '#1f9aa8', '#b3261e', '#6b6b70', '#7a5c00'];
const DAY = 86_400_000;

function usageQuery(format?: 'csv'): string {
  const from = $<HTMLInputElement>('usage-from').value;
  const to = $<HTMLInputElement>('usage-to').value;
  const q = new URLSearchParams();
  if (from) q.set('from', `${from}T00:00:00Z`);
  if (to) q.set('to', new Date(Date.parse(`${to}T00:00:00Z`) + DAY - 1).toISOString());
  const tenant = $<HTMLSelectElement>('usage-tenant').value;
  if (tenant) q.set('tenant', tenant);
  if (format) q.set('format', format);
  return `/admin/usage?${q}`;
}

/** A stacked bar chart: one bar per day, one colour per tenant, height = prompt + completion tokens. */
function usageChart(rows: UsageRow[], from: string, to: string): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  const days: string[] = [];
  for (let t = Date.parse(`${from}T00:00:00Z`); t <= Date.parse(`${to}T00:00:00Z`); t += DAY)
    days.push(new Date(t).toISOString().slice(0, 10));
  const tenants = [...new Set(rows.map((r) => r.tenant))].sort();
  const per = new Map<string, number>();
  for (const r of rows)
    per.set(`${r.day}\0${r.tenant}`, (per.get(`${r.day}\0${r.tenant}`) ?? 0) + r.total_tokens);
  const totals = days.map((d) => tenants.reduce((n, t) => n + (per.get(`${d}\0${t}`) ?? 0), 0));
  const max = Math.max(1, ...totals);
  const W = 900;
  const H = 220;
  const left = 60;
  const bottom = 24;
  const bw = (W - left - 10) / Math.max(1, days.length);
  svg.setAttribute('viewBox', `0 0 ${W} ${H + 30}`);
  svg.setAttribute('width', '100%');
  svg.setAttribute('role', 'img');
  const add = (tag: string, attrs: Record<string, string | number>, text?: string) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  for (const f of [0, 0.5, 1]) {
    const y = H - bottom - f * (H - bottom - 10);
    add('line', { x1: left, x2: W - 10, y1: y, y2: y, stroke: '#deded9' });
    add('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, fmt(max * f));
  }
  days.forEach((d, i) => {
    let y = H - bottom;
    tenants.forEach((t, j) => {
      const v = per.get(`${d}\0${t}`) ?? 0;
      if (!v) return;
      const h = (v / max) * (H - bottom - 10);
      y -= h;
      const r = add('rect', {
        x: left + i * bw + 1,
        y,
        width: Math.max(1, bw - 2),
        height: h,
        fill: PALETTE[j % PALETTE.length],
        'data-tenant': t,
        'data-day': d,
      });
      const title = document.createElementNS(ns, 'title');
      title.textContent = `${t} ${d}: ${fmt(v)} tokens`;
      r.append(title);
    });
    if (days.length <= 16 || i % Math.ceil(days.length / 16) === 0)
      add('text', { x: left + i * bw + bw / 2, y: H - 8, 'text-anchor': 'middle' }, d.slice(5));
  });
  tenants.forEach((t, j) => {
    add('rect', { x: left + j * 130, y: H + 10, width: 10, height: 10, fill: PALETTE[j % PALETTE.length] });
    add('text', { x: left + j * 130 + 14, y: H + 19 }, t);
  });
  return svg;
}

async function loadUsage(): Promise<void> {
  const fromIn = $<HTMLInputElement>('usage-from');
  const toIn = $<HTMLInputElement>('usage-to');
  if (!toIn.value) toIn.value = new Date().toISOString().slice(0, 10);
  if (!fromIn.value) fromIn.value = new Date(Date.now() - 13 * DAY).toISOString().slice(0, 10);
  if ($<HTMLSelectElement>('usage-tenant').options.length <= 1) {
    const { data } = await admin<{ data: TenantView[] }>('/admin/tenants');
    $('usage-tenant').append(...data.map((t) => el('option', { value: t.id, text: t.id })));
  }
  const report = await admin<UsageReport>(usageQuery());
  $('usage-chart').replaceChildren(usageChart(report.data, fromIn.value, toIn.value));
  table(
    $<HTMLTableElement>('usage-table'),
    ['tenant', 'model', 'day', 'prompt tokens', 'completion tokens', 'jobs', 'device s'],
    report.data.map((r) => [
      r.tenant,
      r.model,
      r.day,
      r.prompt_tokens,
      r.completion_tokens,
      r.jobs,
      fmt(r.device_seconds, 3),
    ]),
  );
}

async function downloadCsv(): Promise<void> {
  const res = await request(usageQuery('csv'), store.admin);
  const url = URL.createObjectURL(await res.blob());
  const a = el('a', { href: url, download: 'ppsd-usage.csv' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- live ----

let previous: { at: number; counters: Map<string, Record<string, number>> } | undefined;

function modelCard(m: ModelStats, at: number): HTMLElement {
  const c = m.counters;
  const proposed = c.spec_decode_num_draft_tokens_total ?? 0;
  const accepted = c.spec_decode_num_accepted_tokens_total ?? 0;
  const prev = previous?.counters.get(m.model);
  const dt = previous ? (at - previous.at) / 1000 : 0;
  const rate = (field: string) =>
    prev && dt > 0 ? Math.max(0, ((c[field] ?? 0) - (prev[field] ?? 0)) / dt) : undefined;
  const genRate = rate('generation_tokens_total');
  const dProposed = prev ? proposed - (prev.spec_decode_num_draft_tokens_total ?? 0) : 0;
  const dAccepted = prev ? accepted - (prev.spec_decode_num_accepted_tokens_total ?? 0) : 0;
  const stat = (k: string, v: string) => el('span', { 'data-stat': k }, `${k}: `, el('b', { text: v }));
  const workers = el('table', {});
  table(
    workers,
    [
      'worker',
      'ready',
      'device plan',
      'decoders',
      'busy',
      'batch (running / waiting / max)',
      'KV pool',
      'heartbeat',
    ],
    m.workers.map((w) => [
      w.workerId,
      w.ready ? 'yes' : 'no',
      w.devices.join(' → ') || '-',
      w.decoders.join(', '),
      w.busy,
      w.scheduler ? `${w.scheduler.running} / ${w.scheduler.waiting} / ${w.scheduler.max_batch}` : '-',
      w.scheduler?.kv_budget_bytes
        ? `${fmt((100 * w.scheduler.kv_used_bytes) / w.scheduler.kv_budget_bytes, 1)}% of ${fmt(w.scheduler.kv_budget_bytes / 2 ** 30, 1)} GiB`
        : '-',
      `${fmt(w.age_ms / 1000, 1)} s ago`,
    ]),
  );
  return el(
    'div',
    { class: 'model-card', 'data-model': m.model },
    el('h3', { text: m.model }),
    el(
      'div',
      { class: 'stats' },
      stat('queue waiting', String(m.queue.waiting)),
      stat('running', String(m.queue.active)),
      stat('delayed (retries)', String(m.queue.delayed)),
      stat('workers', String(m.workers.length)),
      stat('acceptance (all time)', proposed > 0 ? `${fmt((accepted / proposed) * 100, 1)}%` : 'no drafts'),
      stat(
        'acceptance (now)',
        dProposed > 0 ? `${fmt((dAccepted / dProposed) * 100, 1)}%` : previous ? 'idle' : 'measuring…',
      ),
      stat('tokens/s (now)', genRate === undefined ? 'measuring…' : fmt(genRate, 1)),
      stat('tokens generated', fmt(c.generation_tokens_total ?? 0)),
      stat(
        'jobs ok / failed / cancelled',
        `${c.request_success_total ?? 0} / ${c.request_failure_total ?? 0} / ${c.request_cancelled_total ?? 0}`,
      ),
    ),
    workers,
  );
}

async function pollLive(): Promise<void> {
  const s = await admin<StatsResponse>('/admin/stats');
  $('live-models').replaceChildren(...s.models.map((m) => modelCard(m, s.at)));
  previous = { at: s.at, counters: new Map(s.models.map((m) => [m.model, m.counters])) };
}

async function startLive(): Promise<void> {
  previous = undefined;
  await pollLive();
  liveTimer = window.setInterval(() => pollLive().catch(showError), 2000);
}

// ---- wiring ----

function init(): void {
  $<HTMLInputElement>('api-key').value = store.api;
  $<HTMLInputElement>('admin-key').value = store.admin;
  $('keys').addEventListener('submit', (ev) => {
    ev.preventDefault();
    store.save($<HTMLInputElement>('api-key').value.trim(), $<HTMLInputElement>('admin-key').value.trim());
    show((document.body.dataset.view as View) ?? 'playground');
  });
  $('forget').addEventListener('click', () => {
    store.forget();
    $<HTMLInputElement>('api-key').value = '';
    $<HTMLInputElement>('admin-key').value = '';
  });
  for (const b of document.querySelectorAll<HTMLButtonElement>('nav button'))
    b.addEventListener('click', () => show(b.dataset.view as View));
  $('play').addEventListener('submit', (ev) => void generate(ev));
  $('stop').addEventListener('click', () => running?.abort());
  $('view-tenants').addEventListener('click', (ev) => onTenantsClick(ev).catch(showError));
  $('new-tenant').addEventListener('submit', (ev) => createTenant(ev).catch(showError));
  $('usage-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    loadUsage().catch(showError);
  });
  $('usage-csv').addEventListener('click', () => downloadCsv().catch(showError));
  show('playground');
}

init();
