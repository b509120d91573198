/**
 * `ppsd publish <package dir> s3://bucket/prefix [--endpoint URL] [--region R]`: verifies the package
 * (every file's size and sha256 against its manifest), uploads every file and the manifest last, with
 * progress on stderr. Workers pull it with PPSD_S3_BUCKET/PPSD_S3_PREFIX (and PPSD_S3_ENDPOINT).
 */
import { resolve } from 'node:path';
import { parseCommandArgs, UsageError } from '@ppsd/engine/cli';
import { verifyPackage } from '@ppsd/engine/package';
import { publishPackage } from './publish';
import { makeS3Client, parseS3Url } from './s3';

const HELP = `usage: ppsd publish <package dir> s3://bucket/prefix [options]

Verifies a model package and uploads it for workers to pull (manifest.json last).

options:
  --endpoint URL   S3-compatible endpoint, path-style (default: $PPSD_S3_ENDPOINT, else AWS S3)
  --region R       AWS region (default: $AWS_REGION or us-east-1)
  --quiet          no progress output`;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parseCommandArgs(
    argv,
    { endpoint: { type: 'string' }, region: { type: 'string' }, quiet: { type: 'boolean' } },
    HELP,
  );
  if (positionals.length !== 2)
    throw new UsageError(`expected <package dir> and s3://bucket/prefix\n\n${HELP}`);
  const dir = resolve(positionals[0]);
  let dest: ReturnType<typeof parseS3Url>;
  try {
    dest = parseS3Url(positionals[1]);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const client = makeS3Client({
    endpoint: values.endpoint ?? process.env.PPSD_S3_ENDPOINT,
    region: values.region,
  });
  const quiet = values.quiet === true;
  const tty = process.stderr.isTTY;
  let lastLine = '';
  const started = Date.now();
  try {
    const res = await publishPackage(client, dir, dest, {
      verify: async (d) => {
        await verifyPackage(d);
      },
      onProgress: (p) => {
        if (quiet) return;
        const pct = Math.floor((100 * p.loaded) / Math.max(1, p.total));
        const line = `publish ${pct}% ${mib(p.loaded)}/${mib(p.total)} MiB  ${p.file}`;
        if (line === lastLine) return;
        lastLine = line;
        process.stderr.write(tty ? `\r\x1b[K${line}` : `${line}\n`);
      },
    });
    if (!quiet && tty) process.stderr.write('\n');
    const secs = (Date.now() - started) / 1000;
    console.error(
      `published ${res.files} files (${mib(res.bytes)} MiB) to s3://${dest.bucket}/${dest.prefix} in ${secs.toFixed(1)} s`,
    );
  } finally {
    client.destroy();
  }
}

const mib = (n: number): string => (n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 2 : 1);
