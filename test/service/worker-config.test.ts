/** Worker configuration validation and the speculation -> decoder mapping (no servers needed). */
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../workers/gpu-worker/src/config';
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
      concurrency: 2,
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
