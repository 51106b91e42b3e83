# Sourced by benchmark scripts that start a fresh server for each run. Makes `work` (a temporary
# directory, removed on exit with the server in it) and defines three functions:
#   stop_server             stops the server started last, if any;
#   fresh_server COMMAND... stops it, clears its data, runs `COMMAND... serve` on a new data
#                           directory under `work` (COMMAND is the binary, or `env VAR=VALUE...
#                           BINARY`), waits for its ports and sets `pid` and `url`; a server that
#                           does not start ends the script with its log;
#   server_pythons          prints the process ids of the python3 processes the server started
#                           (its executors), however deep under it, and no other python.
work="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
stop_server() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
fresh_server() {
  stop_server
  rm -rf "$work/data"
  # Emptied here, not by the redirection below: that one happens in the child, after the fork,
  # and the wait could read the last server's lines before it.
  : >"$work/out"
  "$@" serve --data "$work/data" --listen 127.0.0.1:0 --worker-listen 127.0.0.1:0 \
    >"$work/out" 2>"$work/log" &
  pid=$!
  for _ in $(seq 200); do
    grep -q '^faasd worker port' "$work/out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  url="$(sed -n 's/^faasd listening on //p' "$work/out")"
  [ -n "$url" ] || { echo "the server did not start:" >&2; cat "$work/log" >&2; exit 1; }
}
server_pythons() {
  local p up
  for p in $(pgrep -x python3 || true); do
    up="$p"
    while [ -n "$up" ] && [ "$up" -gt 1 ]; do
      if [ "$up" = "$pid" ]; then echo "$p"; break; fi
      up="$(awk '{print $4}' "/proc/$up/stat" 2>/dev/null || true)"
    done
  done
}
