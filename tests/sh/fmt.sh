#!/usr/bin/env bash
# tests/sh/fmt.sh - the tree is as `make fmt` leaves it: every tracked C file unchanged by
# clang-format 14 (the pinned major version, Debian bookworm's; make deps installs it) with the
# repository's .clang-format. Prints PASS/FAIL lines.
set -u
cd "$(dirname "$0")/../.."
CF=$(command -v clang-format-14 || command -v clang-format || true)
if [ -z "$CF" ] || ! "$CF" --version 2>/dev/null | grep -q 'version 14\.'; then
  echo "FAIL fmt.clang_format: clang-format 14 is not installed (make deps installs clang-format-14)"
  exit 0
fi
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "FAIL fmt.clang_format: not a git checkout (the files checked are git's tracked C files)"
  exit 0
fi
bad=""
while IFS= read -r f; do
  [ -f "$f" ] || continue
  "$CF" --dry-run -Werror "$f" >/dev/null 2>&1 || bad="$bad $f"
done < <(git ls-files '*.c' '*.h')
if [ -z "$bad" ]; then
  echo "PASS fmt.clang_format"
else
  echo "FAIL fmt.clang_format: not formatted (run make fmt):$bad"
fi
