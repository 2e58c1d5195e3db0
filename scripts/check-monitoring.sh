#!/bin/sh
# Checks packaging/monitoring: the dashboard is JSON, and — when promtool is
# available (Debian package `prometheus`) — the alert rules, their unit tests and
# every dashboard query parse. Exit 0 with a note when promtool is missing.
set -eu
cd "$(dirname "$0")/../packaging/monitoring"
python3 -m json.tool vxmesh-dashboard.json >/dev/null
PROMTOOL=${PROMTOOL:-promtool}
# Without promtool on PATH: take it out of Debian's prometheus package (downloaded, not
# installed — installing would start a Prometheus server), cached between runs.
if ! command -v "$PROMTOOL" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
    cache=/var/cache/vxmesh-promtool
    if [ ! -x "$cache/usr/bin/promtool" ]; then
        mkdir -p "$cache/deb"
        if (cd "$cache/deb" && apt-get download prometheus >/dev/null 2>&1); then
            for deb in "$cache"/deb/prometheus_*.deb; do dpkg-deb -x "$deb" "$cache"; done && rm -rf "$cache/deb"
        else
            echo "check-monitoring: could not download Debian's prometheus package for promtool"
        fi
    fi
    [ -x "$cache/usr/bin/promtool" ] && PROMTOOL=$cache/usr/bin/promtool
fi
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
    echo "check-monitoring: promtool not found: dashboard JSON checked, rules not (install the prometheus package or set PROMTOOL)"
    exit 0
fi
echo "check-monitoring: $("$PROMTOOL" --version 2>&1 | head -n 1)"
"$PROMTOOL" check rules vxmesh-alerts.yml
"$PROMTOOL" test rules vxmesh-alerts.test.yml
# The dashboard's queries, as recording rules: promtool parses each one.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
python3 - vxmesh-dashboard.json >"$tmp" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard\n    rules:")
n = 0
for p in d["panels"]:
    for t in p.get("targets", []):
        n += 1
        e = t["expr"].replace("$instance", ".*")
        print(f"      - record: dashboard_query_{n}\n        expr: {json.dumps(e)}")
PY
"$PROMTOOL" check rules "$tmp"
