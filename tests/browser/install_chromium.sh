#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver for tests/test_explorer_browser.py and CI (no browser download:
# the system packages). Needs root (or sudo). Idempotent: does nothing when both are already installed.
# Usage: tests/browser/install_chromium.sh
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "chromium already installed: $(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo unknown)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver
echo "installed chromium $(dpkg-query -W -f='${Version}' chromium)"
