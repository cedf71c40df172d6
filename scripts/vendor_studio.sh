#!/usr/bin/env bash
# Copies the studio's browser libraries out of the npm packages locked in scripts/studio_vendor/ (exact
# versions, integrity hashes) into the folders that are committed, so that serving the studio and running
# its tests need neither npm nor a CDN:
#   studio/vendor/marked.umd.js          marked, the Markdown parser (UMD build: global `marked`)
#   studio/vendor/purify.min.js          DOMPurify, the HTML sanitizer (global `DOMPurify`)
#   studio/vendor/highlight.min.js       highlight.js, common languages (global `hljs`)
#   studio/vendor/a11y-{light,dark}.min.css highlight.js's a11y themes (WCAG AA contrast), light and dark
#   tests/browser/vendor/axe.min.js      axe-core, the accessibility checker of the browser tests (never served)
# and each package's license files into LICENSES/<name>/ beside them. Both vendor folders are made
# afresh: nothing else belongs in them.
#
# Usage: scripts/vendor_studio.sh [DEST_ROOT]   (the repository by default)
# To upgrade: change the versions in scripts/studio_vendor/package.json, run
# `npm install --package-lock-only --prefix scripts/studio_vendor`, then this script, and commit all three.
# tests/integration/test_studio_vendor.py runs it into a temporary folder and compares the bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEST=$(realpath -m "${1:-$ROOT}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp scripts/studio_vendor/package.json scripts/studio_vendor/package-lock.json "$work/"
# npm ci installs the lock exactly (and fails if package.json disagrees with it); --ignore-scripts: only
# files are taken from the packages, nothing of theirs runs here.
npm ci --prefix "$work" --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
modules=$work/node_modules

studio=$DEST/studio/vendor
browser=$DEST/tests/browser/vendor
rm -rf "$studio" "$browser"
mkdir -p "$studio" "$browser"

copy() {  # package, file in the package, destination folder
  install -m 0644 "$modules/$1/$2" "$3/"
}
license() {  # package, destination folder, license files
  local package=$1 folder=$2
  shift 2
  mkdir -p "$folder"
  for name in "$@"; do install -m 0644 "$modules/$package/$name" "$folder/"; done
}

copy marked lib/marked.umd.js "$studio"
copy dompurify dist/purify.min.js "$studio"
copy @highlightjs/cdn-assets highlight.min.js "$studio"
copy @highlightjs/cdn-assets styles/a11y-light.min.css "$studio"
copy @highlightjs/cdn-assets styles/a11y-dark.min.css "$studio"
license marked "$studio/LICENSES/marked" LICENSE
# DOMPurify is dual-licensed (MPL-2.0 or Apache-2.0): LICENSE is the Apache text, LICENSE-MPL the other.
license dompurify "$studio/LICENSES/dompurify" LICENSE LICENSE-MPL
license @highlightjs/cdn-assets "$studio/LICENSES/highlight.js" LICENSE

copy axe-core axe.min.js "$browser"
# axe.min.js bundles other projects' code, whose notices are in LICENSE-3RD-PARTY.txt.
license axe-core "$browser/LICENSES/axe-core" LICENSE LICENSE-3RD-PARTY.txt
