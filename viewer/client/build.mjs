// Build the web client into ../recon_viewer/static/ (committed: pip users need no Node.js).
//   npm ci && npm run build
// ES modules with code splitting: main.js loads capture.js (three + Spark) or ct.js (niivue +
// three) on demand. Minified (NO_MINIFY=1 for readable output while debugging), no source maps,
// nothing loaded from a CDN at run time.
//
// niivue reads Zarr through zarrita, which lazily imports the numcodecs WASM codecs (blosc,
// zstd, lz4: 1.3 MB). The viewer only loads NIfTI, so they are replaced by a stub that fails
// with a clear message if anything ever asks for them.

import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'recon_viewer', 'static');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const noZarrCodecs = {
  name: 'no-zarr-codecs',
  setup(b) {
    b.onResolve({ filter: /^numcodecs(\/.*)?$/ }, (args) => ({ path: args.path, namespace: 'no-zarr-codecs' }));
    b.onLoad({ filter: /.*/, namespace: 'no-zarr-codecs' }, (args) => ({
      contents: `throw new Error(${JSON.stringify(`${args.path} is not bundled: recon view reads NIfTI, not Zarr`)});`,
      loader: 'js',
    }));
  },
};

await build({
  entryPoints: { main: join(here, 'src', 'main.js') },
  bundle: true,
  splitting: true,
  format: 'esm',
  minify: process.env.NO_MINIFY ? false : true,
  target: ['es2022'],
  outdir: out,
  entryNames: '[name]',
  chunkNames: '[name]-[hash]',
  plugins: [noZarrCodecs],
  legalComments: 'linked',
  logLevel: 'warning',
});
for (const name of ['index.html', 'app.css']) copyFileSync(join(here, 'src', name), join(out, name));

let total = 0;
for (const name of readdirSync(out).sort()) {
  const size = statSync(join(out, name)).size;
  total += size;
  console.log(`${(size / 1024).toFixed(0).padStart(7)} KiB  ${name}`);
}
console.log(`${(total / 1024).toFixed(0).padStart(7)} KiB  total`);
