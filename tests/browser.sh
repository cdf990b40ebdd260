#!/usr/bin/env bash
# The web page (ui/) end to end in a real browser: Debian's Chromium, driven by
# Playwright's Python package (its sync API, pointed at /usr/bin/chromium: no
# browser download is possible or needed), against `hedgehog --simulate` and a
# fast `hedgehog simulate`. The scenarios are tests/browser/test_page.py's.
#
#   bash tests/browser.sh                   # every scenario, about 2.5 minutes
#   bash tests/browser.sh -k book           # pytest's own arguments pass through
#
# Installs what it needs (idempotent): the chromium package, and pinned Python
# packages. Screenshots land in target/browser/ (SCREENSHOTS=DIR to change);
# docs/screenshot.png is target/browser/markets.png, copied by hand when the page
# changes. Loopback only; every wait has a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT_VERSION=1.65.2
PYTEST_VERSION=9.2.0

if ! [ -x /usr/bin/chromium ]; then
    echo "browser: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
# (Debian's wrapper script prints a harmless shell complaint to stderr.)
/usr/bin/chromium --version 2>/dev/null
python3 -m pip install --quiet --disable-pip-version-check \
    "playwright==$PLAYWRIGHT_VERSION" "pytest==$PYTEST_VERSION"

cargo build --locked --quiet --bin hedgehog
export HEDGEHOG_BIN="${CARGO_TARGET_DIR:-target}/debug/hedgehog"
export CHROMIUM=/usr/bin/chromium
export SCREENSHOTS="${SCREENSHOTS:-${CARGO_TARGET_DIR:-target}/browser}"
mkdir -p "$SCREENSHOTS"

python3 -m pytest tests/browser -p no:cacheprovider -q "$@"
echo "browser: screenshots in $SCREENSHOTS"
