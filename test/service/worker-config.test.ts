/** Worker configuration validation and the speculation -> decoder mapping (no servers needed). */
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseByteSize } from '../../workers/gpu-worker/src/config';
import {
  JobRejectedError,
  resolveDecoder,
  resolveSpeculation,
} from '../../workers/gpu-worker/src/job-runner';

describe('worker config', () => {
  it('reads a complete S3 configuration', () => {
    const cfg = loadConfig({
      PPSD_REDIS_URL: 'redis://10.0.0.1:6379',
      PPSD_MODEL: 'stories260K',
      PPSD_S3_BUCKET: 'models',
      PPSD_S3_PREFIX: '/packages/stories260K/',
      PPSD_S3_ENDPOINT: 'http://127.0.0.1:4569',
      PPSD_DEVICES: 'cuda:0,cuda:1',
      PPSD_DECODER: 'ppsd',
      PPSD_CONCURRENCY: '2',
      PPSD_CACHE_DIR: '/var/cache/ppsd',
      PPSD_ASG_NAME: 'gpu-pool',
    });
    expect(cfg).toMatchObject({
      model: 'stories260K',
      s3: {
        bucket: 'models',
        prefix: 'packages/stories260K',
        endpoint: 'http://127.0.0.1:4569',
        region: 'us-east-1',
      },
      devices: ['cuda:0', 'cuda:1'],
      decoder: 'ppsd',
      maxBatch: 2, // PPSD_CONCURRENCY, the deprecated alias of PPSD_MAX_BATCH
      cacheDir: '/var/cache/ppsd',
      asgName: 'gpu-pool',
    });
  });

  it('reports every problem at once, naming the variable', () => {
    let err: unknown;
    try {
      loadConfig({
        PPSD_REDIS_URL: 'http://x',
        PPSD_DEVICES: 'cpu,tpu',
        PPSD_DECODER: 'magic',
        PPSD_CONCURRENCY: '0',
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    for (const name of [
      'PPSD_REDIS_URL',
      'PPSD_S3_BUCKET',
      "PPSD_DEVICES entry 'tpu'",
      'PPSD_DECODER',
      'PPSD_CONCURRENCY',
    ]) {
      expect(msg).toContain(name);
    }
  });
});

describe('batching config', () => {
  const base = { PPSD_PACKAGE_DIR: '/tmp/pkg' };
  it('PPSD_MAX_BATCH defaults to 16; PPSD_KV_MEMORY to the engine default', () => {
    const cfg = loadConfig(base);
    expect(cfg.maxBatch).toBe(16);
    expect(cfg.kvMemoryBytes).toBeUndefined();
    expect(cfg.warnings).toEqual([]);
  });

  it('reads PPSD_MAX_BATCH and PPSD_KV_MEMORY with a unit', () => {
    expect(loadConfig({ ...base, PPSD_MAX_BATCH: '32', PPSD_KV_MEMORY: '2GiB' })).toMatchObject({
      maxBatch: 32,
      kvMemoryBytes: 2 * 1024 ** 3,
    });
    expect(loadConfig({ ...base, PPSD_KV_MEMORY: '512MiB' }).kvMemoryBytes).toBe(512 * 1024 ** 2);
    expect(loadConfig({ ...base, PPSD_KV_MEMORY: '2GB' }).kvMemoryBytes).toBe(2e9);
    expect(loadConfig({ ...base, PPSD_KV_MEMORY: '1048576' }).kvMemoryBytes).toBe(1048576);
  });

  it('PPSD_CONCURRENCY is a deprecated alias: used when PPSD_MAX_BATCH is unset, with a warning', () => {
    const alias = loadConfig({ ...base, PPSD_CONCURRENCY: '4' });
    expect(alias.maxBatch).toBe(4);
    expect(alias.warnings.join('\n')).toMatch(/PPSD_CONCURRENCY is deprecated/);
    const both = loadConfig({ ...base, PPSD_CONCURRENCY: '4', PPSD_MAX_BATCH: '8' });
    expect(both.maxBatch).toBe(8);
    expect(both.warnings.join('\n')).toMatch(/ignored/);
  });

  it('PPSD_ENGINE_THREAD: the engine thread by default, the main thread on false, a clear error otherwise', () => {
    expect(loadConfig(base).engineThread).toBe(true);
    expect(loadConfig({ ...base, PPSD_ENGINE_THREAD: 'false' }).engineThread).toBe(false);
    expect(loadConfig({ ...base, PPSD_ENGINE_THREAD: '0' }).engineThread).toBe(false);
    expect(loadConfig({ ...base, PPSD_ENGINE_THREAD: 'yes' }).engineThread).toBe(true);
    expect(() => loadConfig({ ...base, PPSD_ENGINE_THREAD: 'maybe' })).toThrow(
      /PPSD_ENGINE_THREAD must be true or false \(1\/0, yes\/no\), got 'maybe'/,
    );
  });

  it('refuses a bad batch size or KV budget with a clear message', () => {
    const msg = (env: Record<string, string>) => {
      try {
        loadConfig({ ...base, ...env });
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
      return '';
    };
    expect(msg({ PPSD_MAX_BATCH: '0' })).toMatch(/PPSD_MAX_BATCH must be an integer >= 1, got '0'/);
    expect(msg({ PPSD_MAX_BATCH: '2.5' })).toMatch(/PPSD_MAX_BATCH/);
    for (const bad of ['lots', '2 GiBs', '-1GiB', '0', '0.1B', 'GiB', '1e9']) {
      expect(msg({ PPSD_KV_MEMORY: bad }), bad).toContain(
        `PPSD_KV_MEMORY must be a positive size in bytes, e.g. 536870912, 512MiB, 2GiB or 2GB, got '${bad}'`,
      );
    }
  });

  it('parses byte sizes: binary and decimal units, any case, fractions', () => {
    expect(parseByteSize('512MiB')).toBe(536870912);
    expect(parseByteSize('512mib')).toBe(536870912);
    expect(parseByteSize('8Gi')).toBe(8 * 2 ** 30);
    expect(parseByteSize('1.5 GiB')).toBe(1.5 * 2 ** 30);
    expect(parseByteSize('2GB')).toBe(2_000_000_000);
    expect(parseByteSize('2G')).toBe(2_000_000_000);
    expect(parseByteSize('64KiB')).toBe(65536);
    expect(parseByteSize('1TiB')).toBe(2 ** 40);
    expect(parseByteSize('4096')).toBe(4096);
    expect(parseByteSize('4096B')).toBe(4096);
    expect(parseByteSize('2XB')).toBeUndefined();
    expect(parseByteSize('')).toBeUndefined();
  });
});

describe('speculation -> decoder', () => {
  const all = ['ar', 'eesd', 'dv', 'ppsd', 'spd'];
  it('maps off, auto and explicit decoders', () => {
    expect(resolveDecoder('off', 'ppsd', all)).toBe('ar');
    expect(resolveDecoder('auto', 'ppsd', all)).toBe('ppsd');
    expect(resolveDecoder(undefined, 'eesd', all)).toBe('eesd');
    expect(resolveDecoder({ decoder: 'dv' }, 'ar', all)).toBe('dv');
  });
  it('rejects a decoder the worker does not run', () => {
    expect(() => resolveDecoder({ decoder: 'spd' }, 'ar', ['ar'])).toThrow(JobRejectedError);
    expect(() => resolveDecoder({ decoder: 'nope' as 'ar' }, 'ar', all)).toThrow(
      /decoder 'nope' is not available/,
    );
  });
});

describe('speculation -> per-request settings', () => {
  const all = ['ar', 'eesd', 'dv', 'ppsd', 'spd'];
  it('passes stages to ppsd / spd and draftLength to eesd / dv', () => {
    expect(resolveSpeculation({ decoder: 'ppsd', stages: 3 }, 'ar', all, 3)).toEqual({
      decoder: 'ppsd',
      stages: 3,
      draftLength: undefined,
    });
    expect(resolveSpeculation({ decoder: 'dv', draftLength: 5 }, 'ar', all, 2)).toMatchObject({
      decoder: 'dv',
      draftLength: 5,
    });
    expect(resolveSpeculation('auto', 'spd', all, 2)).toEqual({ decoder: 'spd' });
  });
  it('refuses what this worker cannot run, or what the decoder would ignore', () => {
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        return (err as JobRejectedError).code;
      }
    };
    expect(code(() => resolveSpeculation({ decoder: 'ppsd', stages: 3 }, 'ar', all, 2))).toBe(
      'unsupported_stages',
    );
    expect(code(() => resolveSpeculation({ decoder: 'eesd', stages: 2 }, 'ar', all, 2))).toBe(
      'invalid_speculation',
    );
    expect(code(() => resolveSpeculation({ decoder: 'spd', draftLength: 2 }, 'ar', all, 2))).toBe(
      'invalid_speculation',
    );
  });
});
