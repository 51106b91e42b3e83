#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test (scripts/browser-test.py), only
# when no `chromium` is on PATH.
exec "$(dirname "$0")/apt-install.sh" chromium 'command -v chromium >/dev/null' "the browser test"
