#!/usr/bin/env bash
# The practical floor for pulling an image: each layer blob streamed from the
# registry through a single-core `gzip -dc | tar -x` pipeline, layers applied
# one after another into one directory. No digest checks, no store, no
# whiteout handling (.wh.* files are extracted as plain files).
#
#     floor.sh BLOB_URL_PREFIX DEST_DIR DIGEST...
set -euo pipefail
url=$1 dest=$2
shift 2
for digest in "$@"; do
  curl -fsS "$url/$digest" | gzip -dc | tar -x -C "$dest"
done
