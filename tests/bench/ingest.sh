#!/usr/bin/env bash
# Ingest fan-out benchmark (not part of the test suite).
#
# N users of one AGB code, then `notifier ingest` of one portal event for
# them (-> N deliveries, one transaction), timed RUNS times on a fresh
# database each. Needs a built binary (default target/release/notifier).
#
#   N=5000 DB=sqlite bash tests/bench/ingest.sh
#   N=5000 DB=postgres bash tests/bench/ingest.sh   # needs PostgreSQL on 127.0.0.1:5432
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-5000}
DB=${DB:-sqlite}
RUNS=${RUNS:-3}
BIN=${BIN:-target/release/notifier}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or BIN=target/debug/notifier)" >&2; exit 2; }

dir=$(mktemp -d)
pgdb=""
drop_pg() {
  [ -n "$pgdb" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $pgdb" postgres >/dev/null 2>&1 || true
}
trap 'drop_pg; rm -rf "$dir"' EXIT
export RUST_LOG=error

python3 - "$N" >"$dir/users.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"gebruikersnummer": f"4{i:013d}", "naam": f"Gebruiker {i}",
        "email": f"user{i}@bench.example", "status": "actief",
        "koppelingen": [{"agb_code": "09999999", "rechten": ["uitvragen"], "tekenbevoegd": False,
                         "contactpersoon": i == 0}], "versie": 1}))
PY
python3 - >"$dir/event.jsonl" <<'PY'
import json, datetime
print(json.dumps({"specversion": "1.0", "id": "bench-1", "source": "/bench", "type": "uitvraag.vragenlijst_klaargezet",
    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(), "datacontenttype": "application/json",
    "data": {"agb_code": "09999999", "zorgverzekeraar": {"uzovi": "3311", "naam": "Zorgverzekeraar Noord"},
             "url": "https://zip.example.nl/uitvraag/VL-1", "vragenlijst_id": "VL-1",
             "vragenlijst_naam": "Benchmark", "sluitingsdatum": "2027-01-01"}}))
PY
for run in $(seq "$RUNS"); do
  if [ "$DB" = postgres ]; then
    drop_pg
    pgdb="notifier_bench_$$_$run"
    psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $pgdb" postgres >/dev/null
    export NOTIFIER_DATABASE__URL="postgres://postgres@127.0.0.1:5432/$pgdb"
  else
    rm -f "$dir"/bench.db*
    export NOTIFIER_DATABASE__URL="sqlite://$dir/bench.db"
  fi
  "$BIN" migrate >/dev/null
  "$BIN" directory import "$dir/users.jsonl" >/dev/null
  t0=$(date +%s.%N)
  "$BIN" ingest "$dir/event.jsonl" >/dev/null
  t1=$(date +%s.%N)
  # The same event again is a duplicate: what is left is the command's fixed cost.
  "$BIN" ingest "$dir/event.jsonl" >/dev/null
  t2=$(date +%s.%N)
  python3 -c "import sys; a, b, c = map(float, sys.argv[1:4]); print(f'backend $DB, run $run: ingest of one event for $N recipients: {b - a:.2f} s (the same command for a duplicate: {c - b:.2f} s)')" "$t0" "$t1" "$t2"
done
