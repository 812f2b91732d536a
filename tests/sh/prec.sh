#!/usr/bin/env bash
# prec.sh - precision as a user meets it: roundtrip rounds the float32 value of what was typed
# (weights are float32), and corrections quantized with prec= are charged their packed bits.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
Q=./qscope
pass() { echo "PASS prec.$1"; }
fail() { echo "FAIL prec.$1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

# The issue's example: 3.81469727e-05 is, as a float32, the exact tie 3.814697265625e-05 of
# fp8-e5m2's 2^-15 (even code) and 3 * 2^-16; nearest-even gives 2^-15, by command and stdin.
out=$($Q roundtrip fp8-e5m2 3.81469727e-05 2>&1)
check roundtrip-float32-tie "[ '$out' = '3.81469727e-05 -> 3.05175781e-05' ]"
out=$(echo 3.81469727e-05 | $Q roundtrip fp8-e5m2 2>&1)
check roundtrip-float32-tie-stdin "[ '$out' = '3.81469727e-05 -> 3.05175781e-05' ]"
