/**
 * The engine's whole-package check (`verifyPackage`, workers/engine/src/package): every file the manifest
 * lists, sizes first, then sha256; throws a PackageError naming the first bad file. Used by the S3 pull
 * (on the staged download) and by `ppsd publish`. Imported from the engine's package module directly
 * because @ppsd/engine's entry point does not re-export it.
 */
import { verifyPackage } from '../../engine/src/package';

export async function verifyPackageDir(dir: string): Promise<void> {
  await verifyPackage(dir);
}
