#!/usr/bin/env bash
# Builds loom's libFuzzer targets (clang, ASan + UBSan) and runs each for
# SECONDS (default 60), starting from the committed seeds in
# tests/fuzz/corpus/<target>. Exits non-zero at the first crash, leak,
# sanitizer report, timeout or out-of-memory; libFuzzer prints the input and
# writes it to BUILD/fuzz-<target>/artifacts/.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]      TARGET: npy safetensors config (default: all)
#
# LOOM_FUZZ_BUILD_DIR picks the build folder (default build-fuzz).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(npy safetensors config)
build="${LOOM_FUZZ_BUILD_DIR:-$root/build-fuzz}"

mkdir -p "$build"
CXX=clang++ cmake -S "$root" -B "$build" -DLOOM_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLOOM_BUILD_TESTS=OFF -DLOOM_BUILD_EXAMPLES=OFF -DLOOM_BUILD_BENCHMARKS=OFF > "$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j2 $(printf -- '--target loom-fuzz-%s ' "${targets[@]}")

# A dictionary of every config key the reader knows (from models/config.cpp,
# so it never goes stale) and the words its values use.
dict="$build/config.dict"
{
  grep -oE '(integer|number|boolean|custom)\("[a-z_]+"' "$root/models/config.cpp" | sed -E 's/.*\("([a-z_]+)"/"\\"\1\\""/' | sort -u
  for w in TransformerWrapper ContinuousTransformerWrapper ViTransformerWrapper XTransformer Encoder Decoder \
           CrossAttender AttentionLayers enc_ dec_; do echo "\"\\\"$w\\\"\""; done
  printf '"true"\n"false"\n"null"\n"1e308"\n"-1"\n"0.5"\n"9223372036854775807"\n"18446744073709551616"\n'
} > "$dict"

for t in "${targets[@]}"; do
  work="$build/fuzz-$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  extra=()
  [ "$t" = config ] && extra+=("-dict=$dict")
  echo "== loom-fuzz-$t: $seconds s"
  # The working corpus (first folder) keeps what earlier runs found; the seeds are only read.
  ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" UBSAN_OPTIONS="print_stacktrace=1" \
    "$build/tests/fuzz/loom-fuzz-$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=4096 \
    -print_final_stats=1 -print_funcs=0 -artifact_prefix="$work/artifacts/" "${extra[@]}" "$work/corpus" "$root/tests/fuzz/corpus/$t"
done
