#!/usr/bin/env bash
# Serve web/dist (made by web/build.sh) on http://127.0.0.1:${PORT:-8080}/ only.
set -euo pipefail
cd "$(dirname "$0")/dist"
port="${PORT:-8080}"
echo "Seedscope: http://127.0.0.1:$port/  (?autorun=1 analyses the embedded family; ?bundle=URL opens a bundle)"
exec python3 -m http.server --bind 127.0.0.1 "$port"
