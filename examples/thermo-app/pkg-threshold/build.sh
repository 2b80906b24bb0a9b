#!/bin/sh
# Builds package.wasm from threshold.c. `baton app build` runs this in this folder with
# SOURCE_DATE_EPOCH=0; the flags make the output byte-reproducible (no paths, no symbols).
# A WASI reactor (it reads limit.txt through libc): the host calls _initialize once.
set -eu
"${CC:-clang}" --target=wasm32-wasi -O2 -std=c11 -Wall -Wextra \
  -ffile-prefix-map="$PWD"=. -Wl,--strip-all \
  -mexec-model=reactor \
  -o package.wasm threshold.c
