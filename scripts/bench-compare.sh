#!/usr/bin/env bash
# Compares herd with the asyncio and Node baselines (and a trivial echo
# server, the loopback limit) under the same loads, with herd-bench.
#
#   scripts/bench-compare.sh BASELINES_DIR [--runs R] [--quick] [--out FILE]
#       [--contenders herd,asyncio,node,echo] [--duration S] [--warmup S]
#       [--conns N] [--depth D] [--rate R] [--samples N] [--no-build]
#
# BASELINES_DIR holds asyncio_herd.py, node_herd.js and fake_places.py (the
# shared baselines folder). Each measurement starts the contender afresh on
# free loopback ports, runs one load, stops exactly the processes it started
# (by PID) and is repeated R times; the table shows medians, and herd/asyncio
# and herd/node ratios (throughput: above 1 is better for herd; latency:
# below 1 is better). A contender that does not start is skipped with a note.
# --quick: one run of each load, 2 s each, for smoke testing.
#
# Environment: HERD_BENCH and HERD_BIN override the binaries (else they are
# built with cargo); BENCH_THREADS sets herd-bench --threads (default 1).
set -uo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

BASELINES=""
RUNS=3
DURATION=10
WARMUP=2
CONNS=16
DEPTH=4
RATE=2000
SAMPLES=200
OUT=""
BUILD=1
CONTENDERS="herd,asyncio,node,echo"
while (($#)); do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --quick) RUNS=1; DURATION=2; WARMUP=0.5; SAMPLES=30; shift ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --depth) DEPTH="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --samples) SAMPLES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --contenders) CONTENDERS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [[ -z $BASELINES ]] || usage; BASELINES="$1"; shift ;;
    esac
done
[[ -n $BASELINES ]] || usage
BASELINES="$(cd "$BASELINES" && pwd)" || exit 2
for f in asyncio_herd.py node_herd.js fake_places.py; do
    [[ -f $BASELINES/$f ]] || { echo "no $f in $BASELINES" >&2; exit 2; }
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_THREADS="${BENCH_THREADS:-1}"

say() { echo "bench-compare: $*" >&2; }
NOTES=()
note() { NOTES+=("$*"); say "note: $*"; }
wants() { [[ ",$CONTENDERS," == *",$1,"* ]]; }

# ---------------------------------------------------------------- binaries

if [[ -z ${HERD_BENCH:-} ]]; then
    HERD_BENCH="$ROOT/target/release/herd-bench"
    if ((BUILD)); then
        (cd "$ROOT" && cargo build --release --bin herd-bench) >&2 \
            || { say "herd-bench does not build"; exit 1; }
    fi
fi
[[ -x $HERD_BENCH ]] || { say "no herd-bench at $HERD_BENCH"; exit 1; }
if wants herd && [[ -z ${HERD_BIN:-} ]]; then
    HERD_BIN="$ROOT/target/release/herd"
    if ((BUILD)); then
        (cd "$ROOT" && cargo build --release --bin herd) >&2 || note "herd does not build"
    fi
fi
if wants herd && [[ ! -x ${HERD_BIN:-} ]]; then
    note "herd skipped: no binary at ${HERD_BIN:-target/release/herd}"
    CONTENDERS="${CONTENDERS//herd/}"
fi
if wants node && ! command -v node >/dev/null; then
    note "node skipped: node is not installed"
    CONTENDERS="${CONTENDERS//node/}"
fi

# Idle-heavy loads and many pipelined connections need descriptors; the
# servers started below inherit the raised limit too.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK="$(mktemp -d /tmp/bench-compare.XXXXXX)"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
STARTED=()          # PIDs of everything this script started and has not stopped

stop_started() {
    ((${#STARTED[@]})) || return 0
    kill -TERM "${STARTED[@]}" 2>/dev/null
    local pid tries
    for ((tries = 0; tries < 40; tries++)); do
        local alive=0
        for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.05
    done
    for pid in "${STARTED[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    STARTED=()
}
cleanup() { stop_started; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------- ports

# N free loopback ports, all held open together while chosen so they differ.
free_ports() {
    python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# Waits until every port accepts connections, or a started process dies,
# for at most 10 s. Returns non-zero on failure.
wait_ready() {
    local port tries pid
    for port in "$@"; do
        for ((tries = 0; ; tries++)); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            for pid in "${STARTED[@]}"; do
                kill -0 "$pid" 2>/dev/null || { say "process $pid exited while starting"; return 1; }
            done
            ((tries < 200)) || { say "port $port not ready after 10 s"; return 1; }
            sleep 0.05
        done
    done
}

NAMES=(Hill Jaquez Smith Campbell Singleton)
declare -A NEIGHBOURS=(
    [Hill]='"Jaquez", "Smith"'
    [Jaquez]='"Hill", "Singleton"'
    [Smith]='"Hill", "Singleton", "Campbell"'
    [Campbell]='"Smith", "Singleton"'
    [Singleton]='"Jaquez", "Smith", "Campbell"'
)
declare -A CLIENT_PORT

# start CONTENDER TOPOLOGY PROVIDER: starts a herd (TOPOLOGY "herd": the five
# servers of SPEC §1; "single": Hill alone) with PROVIDER "geonames" or
# "google" (the fake places server), on fresh ports. Fills CLIENT_PORT.
start() {
    local contender="$1" topology="$2" provider="$3"
    local ports dir name i
    read -r -a ports <<<"$(free_ports 11)"
    dir="$(mktemp -d "$WORK/$contender.XXXX")"
    local names=("${NAMES[@]}")
    [[ $topology == single ]] && names=(Hill)
    CLIENT_PORT=()
    for i in "${!names[@]}"; do CLIENT_PORT[${names[$i]}]="${ports[$i]}"; done
    local places_port="${ports[10]}"
    local wait_ports=()

    if [[ $contender == asyncio || $contender == node || $provider == google ]]; then
        python3 "$BASELINES/fake_places.py" --port "$places_port" \
            >"$dir/places.out" 2>&1 &
        STARTED+=($!)
        wait_ports+=("$places_port")
    fi
    case "$contender" in
        asyncio|node)
            {
                echo '{"servers": ['
                for i in "${!names[@]}"; do
                    ((i)) && echo ','
                    printf '{"name": "%s", "host": "127.0.0.1", "port": %s}' "${names[$i]}" "${ports[$i]}"
                done
                echo '], "links": ['
                if [[ $topology == herd ]]; then
                    echo '["Hill", "Jaquez"], ["Hill", "Smith"], ["Jaquez", "Singleton"],'
                    echo '["Smith", "Singleton"], ["Smith", "Campbell"], ["Campbell", "Singleton"]'
                fi
                printf '], "places": {"base_url": "http://127.0.0.1:%s", "key": "fake-key"},\n' "$places_port"
                printf '"log_dir": "%s/logs"}\n' "$dir"
            } >"$dir/herd.json"
            for name in "${names[@]}"; do
                if [[ $contender == asyncio ]]; then
                    python3 "$BASELINES/asyncio_herd.py" "$name" --config "$dir/herd.json" \
                        >"$dir/$name.out" 2>&1 &
                else
                    node "$BASELINES/node_herd.js" "$name" --config "$dir/herd.json" \
                        >"$dir/$name.out" 2>&1 &
                fi
                STARTED+=($!)
            done
            ;;
        herd)
            {
                printf 'log_dir = "%s/logs"\n\n[places]\n' "$dir"
                if [[ $provider == google ]]; then
                    printf 'provider = "google"\nbase_url = "http://127.0.0.1:%s"\nkey = "fake-key"\n' "$places_port"
                else
                    printf 'provider = "geonames"\n'
                fi
                for i in "${!names[@]}"; do
                    name="${names[$i]}"
                    printf '\n[[servers]]\nname = "%s"\nclient = "127.0.0.1:%s"\npeer = "127.0.0.1:%s"\n' \
                        "$name" "${ports[$i]}" "${ports[$((i + 5))]}"
                    if [[ $topology == herd ]]; then
                        printf 'neighbours = [%s]\n' "${NEIGHBOURS[$name]}"
                    else
                        printf 'neighbours = []\n'
                    fi
                done
            } >"$dir/herd.toml"
            for name in "${names[@]}"; do
                # From the crate root, so that data/ paths resolve.
                (cd "$ROOT" && HERD_SECRET="$SECRET" exec "$HERD_BIN" serve "$name" \
                    --config "$dir/herd.toml") >"$dir/$name.out" 2>&1 &
                STARTED+=($!)
            done
            ;;
        echo)
            "$HERD_BENCH" echo-server --addr "127.0.0.1:${ports[0]}" --max-run 3600 \
                >"$dir/echo.out" 2>&1 &
            STARTED+=($!)
            ;;
    esac
    wait_ports+=("${CLIENT_PORT[@]}")
    if ! wait_ready "${wait_ports[@]}"; then
        local out
        for out in "$dir"/*.out; do
            [[ -s $out ]] && say "$(basename "$out"): $(tail -n 3 "$out" | tr '\n' ' ')"
        done
        stop_started
        return 1
    fi
}
SECRET="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# ------------------------------------------------------------------- loads

# record ROW METRIC CONTENDER VALUE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# measure ROW CONTENDER TOPOLOGY PROVIDER KIND ARGS...: R fresh runs of one
# herd-bench command; KIND says which figures to keep.
measure() {
    local row="$1" contender="$2" topology="$3" provider="$4" kind="$5"
    shift 5
    local run json rc args
    for ((run = 1; run <= RUNS; run++)); do
        if ! start "$contender" "$topology" "$provider"; then
            note "$contender did not start for \"$row\" ($topology, $provider places): skipped"
            return 1
        fi
        # Placeholders name servers; they become their client ports.
        args=()
        local arg
        for arg in "$@"; do
            case "$arg" in
                @*) args+=("127.0.0.1:${CLIENT_PORT[${arg#@}]}") ;;
                *) args+=("$arg") ;;
            esac
        done
        say "$row | $contender | run $run/$RUNS"
        json="$("$HERD_BENCH" --threads "$BENCH_THREADS" --json "${args[@]}" 2>"$WORK/bench.err")"
        rc=$?
        stop_started
        if [[ -z $json ]]; then
            note "$contender, \"$row\", run $run: herd-bench failed: $(tr '\n' ' ' <"$WORK/bench.err")"
            continue
        fi
        if ((rc != 0)); then
            note "$contender, \"$row\", run $run: not counted, herd-bench found problems: $(
                python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("invalid","errors","unanswered","invalid_samples","error_samples") if k in d and d[k]})' <<<"$json" 2>/dev/null)"
            continue
        fi
        printf '%s\n' "$json" >"$WORK/last.json"
        python3 - "$row" "$contender" "$kind" "$RESULTS" "$WORK/last.json" <<'EOF'
import json, sys
row, contender, kind, results, path = sys.argv[1:]
d = json.load(open(path))
if kind == "load":
    figures = [("throughput (req/s)", d["throughput_rps"]),
               ("p50 latency (ms)", d["latency_us"]["p50"] / 1000),
               ("p99 latency (ms)", d["latency_us"]["p99"] / 1000)]
elif kind == "rate":
    figures = [("p50 latency (ms)", d["latency_us"]["p50"] / 1000),
               ("p99 latency (ms)", d["latency_us"]["p99"] / 1000)]
else:
    t = d["targets"][0]
    figures = [("p50 (ms)", t["latency_us"]["p50"] / 1000),
               ("p99 (ms)", t["latency_us"]["p99"] / 1000)]
with open(results, "a") as f:
    for metric, value in figures:
        f.write("%s\t%s\t%s\t%r\n" % (row, metric, contender, value))
EOF
    done
}

LOAD=(--conns "$CONNS" --depth "$DEPTH" --duration "$DURATION" --warmup "$WARMUP")
ROW_HERD="IAMAT, five-server herd, load on Hill (${CONNS} conns x depth ${DEPTH})"
ROW_SINGLE="IAMAT, one server (${CONNS} conns x depth ${DEPTH})"
ROW_RATE="IAMAT at ${RATE}/s open loop, five-server herd, on Hill"
ROW_PROP="propagation Hill -> Campbell (${SAMPLES} samples)"
ROW_WGEO="WHATSAT 10 km bound 5, one server, geonames"
ROW_WGOOGLE="WHATSAT 10 km bound 5, one server, fake Google places"

for contender in herd asyncio node echo; do
    wants "$contender" || continue
    if [[ $contender != echo ]]; then
        measure "$ROW_HERD" "$contender" herd geonames load iamat --addr @Hill "${LOAD[@]}"
        measure "$ROW_RATE" "$contender" herd geonames rate \
            iamat --addr @Hill --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP"
    else
        # The echo server has no herd: its rate row is one server.
        measure "$ROW_RATE" echo single geonames rate \
            iamat --addr @Hill --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP"
    fi
    measure "$ROW_SINGLE" "$contender" single geonames load iamat --addr @Hill "${LOAD[@]}"
    [[ $contender == echo ]] && continue
    if [[ $contender == herd ]]; then
        measure "$ROW_WGEO" herd single geonames load \
            whatsat --addr @Hill "${LOAD[@]}" --radius 10 --bound 5
        # Propagation is polled with WHATSAT, so every contender uses the
        # same (fake Google) provider where it can.
        if ! measure "$ROW_PROP" herd herd google prop \
            propagate --from @Hill --to @Campbell --samples "$SAMPLES"; then
            note "herd's propagation is polled through its geonames provider instead"
            measure "$ROW_PROP" herd herd geonames prop \
                propagate --from @Hill --to @Campbell --samples "$SAMPLES"
        fi
    else
        measure "$ROW_PROP" "$contender" herd google prop \
            propagate --from @Hill --to @Campbell --samples "$SAMPLES"
    fi
    measure "$ROW_WGOOGLE" "$contender" single google load \
        whatsat --addr @Hill "${LOAD[@]}" --radius 10 --bound 5
done

# ------------------------------------------------------------------- table

python3 - "$RESULTS" "$RUNS" "$ROW_HERD" "$ROW_RATE" "$ROW_SINGLE" "$ROW_PROP" "$ROW_WGEO" "$ROW_WGOOGLE" <<'EOF' | tee "${OUT:-/dev/null}"
import statistics, sys
results, runs, *rows = sys.argv[1:]
values = {}
for line in open(results):
    row, metric, contender, value = line.rstrip("\n").split("\t")
    values.setdefault((row, metric), {}).setdefault(contender, []).append(float(value))

def show(v):
    if v is None:
        return "—"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v

def ratio(a, b):
    return "—" if a is None or not b else "%.2f" % (a / b)

cols = ["herd", "asyncio", "node", "echo"]
print("| load | metric | herd | asyncio | node | loopback limit | herd/asyncio | herd/node |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for row in rows:
    metrics = [m for (r, m) in values if r == row]
    for metric in metrics:
        med = {c: statistics.median(v) if v else None
               for c, v in ((c, values[(row, metric)].get(c)) for c in cols)}
        counts = {c: len(values[(row, metric)].get(c, [])) for c in cols}
        cells = []
        for c in cols:
            cell = show(med[c])
            if med[c] is not None and counts[c] < int(runs):
                cell += " (%d/%s runs)" % (counts[c], runs)
            cells.append(cell)
        print("| %s | %s | %s | %s | %s |" % (row, metric, " | ".join(cells),
              ratio(med["herd"], med["asyncio"]), ratio(med["herd"], med["node"])))
if int(runs) > 1:
    print()
    print("<details><summary>every run</summary>")
    print()
    print("| load | metric | herd | asyncio | node | loopback limit |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for (r, metric) in values:
            if r != row:
                continue
            cells = [" / ".join(show(v) for v in values[(row, metric)].get(c, [])) or "—"
                     for c in cols]
            print("| %s | %s | %s |" % (row, metric, " | ".join(cells)))
    print()
    print("</details>")
print()
print("Medians of %s run(s) each; every run starts the contender afresh. Throughput ratios" % runs)
print("above 1 favour herd, latency ratios below 1 favour herd. Open-loop latency is counted")
print("from each request's intended send time (a pacing thread wakes the sender within about")
print("0.1 ms of it, which every contender pays alike). Propagation is polled with WHATSAT, so it")
print("includes one WHATSAT round trip (with its places lookup). The loopback limit is")
print("herd-bench's own echo server (one thread, no state, no flooding; one server in every row).")
EOF

if ((${#NOTES[@]})); then
    {
        echo
        echo "Notes:"
        for n in "${NOTES[@]}"; do echo "- $n"; done
    } | tee -a "${OUT:-/dev/null}"
fi
