/** Model packages: a folder with manifest.json, weights.safetensors and a tokenizer, every file checksummed. */
export { hashBytes, hashFile } from './checksum';
export { addPackageFile, mergePatch } from './files';
export {
  type LoadedPackage,
  loadPackage,
  packageTokenizerOptions,
  readManifest,
  verifyPackage,
} from './load';
export {
  type ChatTemplate,
  type FileRecord,
  MANIFEST_FILE,
  PACKAGE_FORMAT,
  PACKAGE_VERSION,
  PackageError,
  type PackageFileRef,
  type PackageManifest,
  parseManifest,
  WEIGHTS_FILE,
} from './manifest';
export { type PackageExtras, writePackage } from './write';
