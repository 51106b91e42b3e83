#!/usr/bin/env bash
# Installs Debian's static busybox for the image tests (tests/oci.rs put it alone in an image's
# one layer), only when /bin/busybox is missing.
exec "$(dirname "$0")/apt-install.sh" busybox-static '[ -x /bin/busybox ]' "the image tests"
