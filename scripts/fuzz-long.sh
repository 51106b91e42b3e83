#!/usr/bin/env bash
# Long fuzz run: every group of fuzz targets (docs/fuzzing.md) for at least SECONDS each
# (default 600), in a release build. Proptest draws a fresh seed on every run, so each round
# below explores new inputs. Prints one line per group: seconds, cases, rounds, result.
#
#   scripts/fuzz-long.sh            # 10 minutes a group
#   scripts/fuzz-long.sh 60         # a minute a group
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-600}"
# group | test binary | filter | cases a round
groups=(
  "registration|lib|fuzz_registration_|20000"
  "invoke and status queries|lib|fuzz_invoke_and_status_queries|50000"
  "batch|lib|fuzz_batch_|20000"
  "tasks/wait|lib|fuzz_wait_bodies|20000"
  "mpcs|lib|fuzz_mpcs_bodies|20000"
  "worker frames|decoders|fuzz_frame_|50000"
  "store records|decoders|fuzz_record|50000"
)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Build once, then run the test binaries themselves: cargo would hold the target directory's
# lock for the whole run.
cargo test --locked --release --lib --test fuzz_decoders --no-run 2>"$log" || { cat "$log"; exit 1; }
lib=$(sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p' "$log")
decoders=$(sed -n 's/.*Executable tests\/fuzz_decoders.rs (\(.*\))$/\1/p' "$log")
printf '%-28s %8s %12s %7s  %s\n' group seconds cases rounds result
failed=0
for entry in "${groups[@]}"; do
  IFS='|' read -r name which filter chunk <<<"$entry"
  bin=$lib
  [[ $which == decoders ]] && bin=$decoders
  targets=$("$bin" "$filter" --list 2>/dev/null | grep -c ': test$' || true)
  start=$(date +%s)
  rounds=0
  result=ok
  while (($(date +%s) - start < budget)); do
    if ! PROPTEST_CASES="$chunk" "$bin" "$filter" >"$log" 2>&1; then
      result=FAILED
      cat "$log"
      break
    fi
    rounds=$((rounds + 1))
  done
  elapsed=$(($(date +%s) - start))
  printf '%-28s %8d %12d %7d  %s\n' "$name" "$elapsed" $((rounds * chunk * targets)) "$rounds" "$result"
  [[ $result == ok ]] || failed=1
done
exit "$failed"
