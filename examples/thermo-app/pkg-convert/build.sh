#!/bin/sh
# Builds package.wasm from convert.c. `baton app build` runs this in this folder with
# SOURCE_DATE_EPOCH=0; the flags make the output byte-reproducible (no paths, no symbols).
# A pure module: no libc start-up (-nostartfiles) and no entry point.
set -eu
"${CC:-clang}" --target=wasm32-wasi -O2 -std=c11 -Wall -Wextra \
  -ffile-prefix-map="$PWD"=. -Wl,--strip-all \
  -nostartfiles -Wl,--no-entry \
  -o package.wasm convert.c
