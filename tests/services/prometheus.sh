#!/usr/bin/env bash
# Debian's Prometheus package, for its promtool: `promtool check config|rules` and `promtool test rules`
# validate and unit-test deploy/prometheus/ (tests/integration/test_prometheus_rules.py).
#   install          install the package if promtool is missing (apt; root or sudo)
set -euo pipefail

cmd=${1:-install}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

case "$cmd" in
  install)
    if ! command -v promtool >/dev/null 2>&1; then
      as_root apt-get update -qq
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi
    # The package's own service is not used: the tests only run promtool.
    ;;
  *)
    echo "usage: $0 install" >&2; exit 2;;
esac
