#!/bin/sh
# Checks packaging/monitoring: the dashboard is JSON, and — when promtool is
# available (Debian package `prometheus`) — the alert rules, their unit tests and
# every dashboard query parse. Exit 0 with a note when promtool is missing.
set -eu
cd "$(dirname "$0")/../packaging/monitoring"
python3 -m json.tool vxmesh-dashboard.json >/dev/null
PROMTOOL=${PROMTOOL:-promtool}
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
    echo "check-monitoring: promtool not found: dashboard JSON checked, rules not (install the prometheus package or set PROMTOOL)"
    exit 0
fi
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
