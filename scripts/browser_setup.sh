#!/usr/bin/env bash
# Install Debian's Chromium for the browser check of the report (scripts/browser_check.py,
# tests/test_browser_check.py) when it is absent. Where it cannot be installed (not root,
# no apt-get), say so: the browser tests then skip with the same message.
set -uo pipefail
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "browser setup: $(command -v "$name") is installed"
    exit 0
  fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "browser setup: no Chromium, and it cannot be installed here (needs root and apt-get);" \
    "the browser check of the report will be skipped"
  exit 0
fi
echo "browser setup: installing Debian's chromium package"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
  echo "browser setup: installing chromium failed; the browser check of the report will be skipped"
fi
exit 0
