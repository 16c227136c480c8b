#!/usr/bin/env bash
# Vendors NiiVue (the WebGL NIfTI viewer of `mmhvae view`) into the package from the npm registry:
#   bash scripts/vendor_niivue.sh
# Writes src/mmhvae/viewer/assets/niivue.umd.js (its single-file browser build, which works from file:// pages
# without a server) and checks it against NIIVUE_SHA256, so that a re-run reproduces the committed file. The
# package is never fetched at run time: the page loads the vendored copy from its own folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.69.0
NIIVUE_SHA256=$(cat src/mmhvae/viewer/assets/niivue.umd.js.sha256 2>/dev/null || true)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@niivue/niivue@$VERSION" >/dev/null && tar -xzf niivue-niivue-$VERSION.tgz)
got=$(sha256sum "$work/package/dist/niivue.umd.js" | cut -d' ' -f1)
if [ -n "$NIIVUE_SHA256" ] && [ "$got" != "$NIIVUE_SHA256" ]; then
  echo "niivue $VERSION: checksum $got differs from the recorded $NIIVUE_SHA256" >&2; exit 1
fi
cp "$work/package/dist/niivue.umd.js" src/mmhvae/viewer/assets/niivue.umd.js
echo "$got" > src/mmhvae/viewer/assets/niivue.umd.js.sha256
grep -q "\"license\": \"BSD-2-Clause\"" "$work/package/package.json"  # the licence the assets' LICENSE-niivue.txt gives
echo "vendored @niivue/niivue $VERSION (sha256 $got)"
