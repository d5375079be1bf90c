#!/usr/bin/env bash
# The coverage figure at the end of `make test`: the share of product lines that ran in any
# Python process the tests started, in all and per package.
set -euo pipefail
cd "$(dirname "$0")/.."
COV="${VENV:-.venv}/bin/coverage"
"$COV" combine -q >/dev/null 2>&1 || { echo "coverage: no data recorded"; exit 0; }
echo "coverage of product lines run by any test process (the corral CLI's subprocess calls not traced):"
for pkg in hostagent membership election storage kvm cli; do
  printf '  %-10s %s%%\n' "$pkg" "$("$COV" report --include="$pkg/*" --format=total 2>/dev/null || echo '?')"
done
printf '  %-10s %s%%   (every file: %s report)\n' "all" "$("$COV" report --format=total)" "$COV"
