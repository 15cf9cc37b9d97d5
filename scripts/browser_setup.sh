#!/usr/bin/env bash
# Install Debian's Chromium (the browser check of the report: scripts/browser_check.py,
# tests/test_browser_check.py) and poppler-utils (pdftotext: page numbers and the running
# header of the printed PDF) when they are absent. Where they cannot be installed (not root,
# no apt-get), say so: the browser tests then skip, and the PDF text checks print
# "not checked", with the same message.
set -uo pipefail
packages=()
browser=""
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then
    browser="$(command -v "$name")"
    break
  fi
done
if [ -n "$browser" ]; then
  echo "browser setup: $browser is installed"
else
  packages+=(chromium)
fi
if command -v pdftotext >/dev/null 2>&1; then
  echo "browser setup: $(command -v pdftotext) is installed"
else
  packages+=(poppler-utils)
fi
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "browser setup: ${packages[*]} missing and cannot be installed here (needs root and" \
    "apt-get); the browser check of the report will skip what needs them"
  exit 0
fi
echo "browser setup: installing Debian's ${packages[*]}"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null; }; then
  echo "browser setup: installing ${packages[*]} failed; the browser check of the report will" \
    "skip what needs them"
fi
exit 0
