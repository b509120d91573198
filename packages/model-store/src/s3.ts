/**
 * S3 client construction shared by the worker (package pull) and `ppsd publish` (package push).
 * S3-compatible servers (s3rver, MinIO) are reached with path-style addressing through PPSD_S3_ENDPOINT.
 */
import { S3Client } from '@aws-sdk/client-s3';

export interface S3Options {
  /** S3-compatible endpoint (http://127.0.0.1:4569); unset = AWS S3 for `region`. */
  endpoint?: string;
  region?: string;
}

/** The fixed credentials of the local s3rver (it checks signatures against these). */
export const LOCAL_S3_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

export function makeS3Client(opts: S3Options = {}): S3Client {
  // The SDK warns once per process that releases after 2027-01 need Node 22; nothing to act on here.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const region = opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
  if (!opts.endpoint) return new S3Client({ region });
  const haveEnvCredentials = !!(process.env.AWS_ACCESS_KEY_ID && process.env.AWS_SECRET_ACCESS_KEY);
  return new S3Client({
    region,
    endpoint: opts.endpoint,
    forcePathStyle: true,
    // S3-compatible servers often lack the SDK's newer default CRC32 trailers: only checksum when required.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...(haveEnvCredentials ? {} : { credentials: { ...LOCAL_S3_CREDENTIALS } }),
  });
}

export interface S3Location {
  bucket: string;
  /** Key prefix without leading or trailing slash ('' for the bucket root). */
  prefix: string;
}

/** Parses `s3://bucket/some/prefix` (trailing slash optional). */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (!m) throw new Error(`not an s3:// URL: '${url}' (expected s3://bucket/prefix)`);
  return { bucket: m[1], prefix: normalizePrefix(m[2]) };
}

export const normalizePrefix = (prefix: string): string => prefix.replace(/^\/+|\/+$/g, '');

/** The object key of `file` (a package-relative path with '/' separators) under `prefix`. */
export const objectKey = (prefix: string, file: string): string => (prefix ? `${prefix}/${file}` : file);
