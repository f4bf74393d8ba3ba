#!/usr/bin/env bash
# Dispatch throughput benchmark (not part of the test suite).
#
# N users of one AGB code, one portal event -> N deliveries, then
# `notifier dispatch --until-idle` against Postfix's smtp-sink on loopback.
# Prints mails per second. Needs `smtp-sink` (Debian: postfix) and a built
# binary (default target/release/notifier: `cargo build --release`).
#
#   N=5000 CONC=8 DB=sqlite bash tests/bench/dispatch.sh
#   N=5000 CONC=8 DB=postgres bash tests/bench/dispatch.sh   # needs PostgreSQL on 127.0.0.1:5432
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-5000}
CONC=${CONC:-8}
DB=${DB:-sqlite}
BIN=${BIN:-target/release/notifier}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or BIN=target/debug/notifier)" >&2; exit 2; }
command -v smtp-sink >/dev/null || { echo "smtp-sink missing: apt-get install postfix" >&2; exit 2; }

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
smtp-sink "${user[@]}" -c 127.0.0.1:"$port" 1000 >"$dir/sink.log" 2>&1 &
sink=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
pgdb=""
cleanup() {
  kill "$sink" 2>/dev/null || true
  [ -n "$pgdb" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $pgdb" postgres >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

if [ "$DB" = postgres ]; then
  pgdb="notifier_bench_$$"
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $pgdb" postgres >/dev/null
  export NOTIFIER_DATABASE__URL="postgres://postgres@127.0.0.1:5432/$pgdb"
else
  export NOTIFIER_DATABASE__URL="sqlite://$dir/bench.db"
fi
export NOTIFIER_SMTP__URL="smtp://127.0.0.1:$port"
export NOTIFIER_SMTP__MAX_RATE=0
export NOTIFIER_SMTP__CONCURRENCY="$CONC"
export NOTIFIER_DISPATCH__BATCH_SIZE=500
export RUST_LOG=${RUST_LOG:-error}

"$BIN" migrate >/dev/null
python3 - "$N" >"$dir/users.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"gebruikersnummer": f"4{i:013d}", "naam": f"Gebruiker {i}",
        "email": f"user{i}@bench.example", "status": "actief",
        "koppelingen": [{"agb_code": "09999999", "rechten": ["uitvragen"], "tekenbevoegd": False,
                         "contactpersoon": i == 0}], "versie": 1}))
PY
"$BIN" directory import "$dir/users.jsonl" >/dev/null
python3 - >"$dir/event.jsonl" <<'PY'
import json, datetime
print(json.dumps({"specversion": "1.0", "id": "bench-1", "source": "/bench", "type": "uitvraag.vragenlijst_klaargezet",
    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(), "datacontenttype": "application/json",
    "data": {"agb_code": "09999999", "zorgverzekeraar": {"uzovi": "3311", "naam": "Zorgverzekeraar Noord"},
             "url": "https://zip.example.nl/uitvraag/VL-1", "vragenlijst_id": "VL-1",
             "vragenlijst_naam": "Benchmark", "sluitingsdatum": "2027-01-01"}}))
PY
t0=$(date +%s.%N)
"$BIN" ingest "$dir/event.jsonl" >/dev/null
t1=$(date +%s.%N)
out=$("$BIN" dispatch --until-idle)
t2=$(date +%s.%N)
python3 - "$N" "$t0" "$t1" "$t2" "$out" "$DB" "$CONC" <<'PY'
import sys
n, t0, t1, t2, out, db, conc = int(sys.argv[1]), *map(float, sys.argv[2:5]), sys.argv[5], sys.argv[6], sys.argv[7]
print(f"backend {db}, smtp.concurrency {conc}: {out}")
print(f"ingest (resolve {n} recipients, one transaction): {t1 - t0:.2f} s")
print(f"dispatch {n} mails: {t2 - t1:.2f} s = {n / (t2 - t1):.0f} mails/s")
PY
