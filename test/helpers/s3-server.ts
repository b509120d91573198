/**
 * A real S3-protocol server for tests: s3rver on a free 127.0.0.1 port with its data in a temp folder.
 * Clients reach it with @aws-sdk/client-s3 (path-style, credentials S3RVER/S3RVER: see makeS3Client).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, type S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { makeS3Client } from '../../packages/model-store/src/s3';

export interface TestS3 {
  endpoint: string;
  port: number;
  directory: string;
  client: S3Client;
  createBucket(name: string): Promise<void>;
  stop(): Promise<void>;
}

export async function startS3(opts: { directory?: string; port?: number } = {}): Promise<TestS3> {
  const directory = opts.directory ?? (await mkdtemp(join(tmpdir(), 'ppsd-s3-')));
  const owned = !opts.directory;
  const server = new S3rver({ address: '127.0.0.1', port: opts.port ?? 0, silent: true, directory });
  const addr = (await server.run()) as AddressInfo;
  const endpoint = `http://127.0.0.1:${addr.port}`;
  const client = makeS3Client({ endpoint, region: 'us-east-1' });
  return {
    endpoint,
    port: addr.port,
    directory,
    client,
    async createBucket(name) {
      await client.send(new CreateBucketCommand({ Bucket: name }));
    },
    async stop() {
      client.destroy();
      await server.close().catch(() => {});
      if (owned) await rm(directory, { recursive: true, force: true });
    },
  };
}
