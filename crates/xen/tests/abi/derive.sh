#!/usr/bin/env bash
# Derives the layout facts of one Xen release from its own public headers: extracts
# xen/include/public at the release tag from a Xen git repository, builds layout.c against
# it (XEN_ONLY: Linux's privcmd.h is not part of Xen) and writes what it prints to
# RELEASE-<tag>.facts beside this script. The facts (sizes, offsets, constants) are what
# tests/layout.rs checks ptguard's ABI table against; the headers are not kept.
#
# Usage: bash crates/xen/tests/abi/derive.sh XEN_GIT_DIR RELEASE-4.21.0 [...]
# (XEN_GIT_DIR: a clone of https://xenbits.xen.org/git-http/xen.git or its GitHub mirror.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$1; shift
for tag in "$@"; do
    tmp=$(mktemp -d)
    mkdir -p "$tmp/include/xen"
    git -C "$repo" archive "$tag" xen/include/public | tar -x -C "$tmp"
    cp -r "$tmp/xen/include/public/." "$tmp/include/xen/"
    ${CC:-cc} -DXEN_ONLY -I"$tmp/include" -o "$tmp/layout" "$here/layout.c"
    { echo "# $tag: printed by layout.c built against that tag's xen/include/public (derive.sh)"
      "$tmp/layout"; } > "$here/$tag.facts"
    rm -rf "$tmp"
    echo "$here/$tag.facts"
done
