/**
 * The engine's whole-package check (`verifyPackage` from @ppsd/engine): every file the manifest lists,
 * sizes first, then sha256; throws a PackageError naming the first bad file. Used by the S3 pull (on
 * the staged download) on top of the pull's own per-file check.
 */
import { verifyPackage } from '@ppsd/engine';

export async function verifyPackageDir(dir: string): Promise<void> {
  await verifyPackage(dir);
}
