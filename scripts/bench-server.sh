# Sourced by the benchmark scripts: starts `"$bin" serve` on a temporary data directory with the
# arguments given, sets `url` and `work` (removed on exit, with the server), and prints the
# machine and server lines every benchmark's output begins with.
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" serve --data "$work/data" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 "$@" \
  >"$work/out" 2>"$work/log" &
server_pid=$!
for _ in $(seq 100); do grep -q '^faasd worker port' "$work/out" 2>/dev/null && break; sleep 0.05; done
url="$(sed -n 's/^faasd listening on //p' "$work/out")"
[ -n "$url" ] || { echo "server did not start:"; cat "$work/log"; exit 1; }
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d)"
echo "server:  faasd serve $* (url $url)"
