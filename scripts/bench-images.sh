#!/usr/bin/env bash
# Image and HTTP-service functions (issue 17, point 5), against a release server started here:
# - the cold start of an `oci` function: its first call after register (with the unpack), and
#   later cold calls from the unpacked cache (CALLS sequential sync calls, default 100);
# - the time from registering an HTTP-service function (busybox httpd in an image, and an `exec`
#   bundle running `python3 -m http.server`) until it answers its first request;
# - the steady-state throughput of that trivial HTTP service (busybox httpd serving a small
#   file) through faasd (`/function/NAME/file.txt`) against calling the same server directly,
#   with `wrk` (DURATION seconds each, default 10, CONNECTIONS connections, default 32).
# Images are built here by scripts/make_image.py from Debian's static busybox; no Docker.
# Usage: [CALLS=100] [DURATION=10] [CONNECTIONS=32] scripts/bench-images.sh [`faasd serve` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${CALLS:-100}"
duration="${DURATION:-10}"
connections="${CONNECTIONS:-32}"
scripts/install-busybox.sh >/dev/null
scripts/apt-install.sh wrk 'command -v wrk >/dev/null' "the HTTP throughput runs" >/dev/null
source scripts/bench-env.sh
source scripts/bench-server.sh
python3 scripts/make_image.py "$work/cat.tar" --cmd '["/bin/busybox", "cat"]'
python3 scripts/make_image.py "$work/web.tar" --entrypoint '["/bin/busybox", "httpd", "-f"]' \
  --cmd '["-p", "127.0.0.1:8080", "-h", "/www"]' --file "www/file.txt=hello from httpd"
python3 scripts/bench_images.py cold "$url" "$bin" "$work/cat.tar" "$calls"
python3 scripts/bench_images.py first "$url" "$bin" "$work/web.tar" web 8080 file.txt
mkdir -p "$work/pyweb"
printf '#!/bin/sh\necho "hello from python" > file.txt\nexec python3 -m http.server 8081 --bind 127.0.0.1\n' \
  >"$work/pyweb/serve.sh"
"$bin" register pyweb "$work/pyweb/serve.sh" --runtime exec --http-port 8081 --url "$url" \
  >/dev/null
started=$(date +%s.%N)
curl -sf "$url/function/pyweb/file.txt" >/dev/null
echo "HTTP-service function pyweb (exec, python3 -m http.server), register to the first 200:" \
  "$(python3 -c "import sys; print('%.1f ms' % ((float(sys.argv[2]) - float(sys.argv[1])) * 1000))" \
  "$started" "$(date +%s.%N)")"

# The same httpd outside faasd, on a free port of the host.
mkdir -p "$work/www"
echo -n "hello from httpd" >"$work/www/file.txt"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
/bin/busybox httpd -f -p "127.0.0.1:$port" -h "$work/www" &
direct_pid=$!
trap 'kill $direct_pid 2>/dev/null; cleanup' EXIT
rate() { wrk -t2 -c"$connections" -d"${duration}s" --latency "$1" | awk '
  /Requests\/sec/ {rps = $2} /^ +50%/ {p50 = $2} /^ +99%/ {p99 = $2}
  /Non-2xx/ {bad = $NF} END {printf "%s requests/s, p50 %s, p99 %s%s\n", rps, p50, p99, bad ? ", non-2xx " bad : ""}'; }
echo "busybox httpd directly:      $(rate "http://127.0.0.1:$port/file.txt")"
echo "busybox httpd through faasd: $(rate "$url/function/web/file.txt")"
echo "busybox httpd directly:      $(rate "http://127.0.0.1:$port/file.txt")"
echo "busybox httpd through faasd: $(rate "$url/function/web/file.txt")"
