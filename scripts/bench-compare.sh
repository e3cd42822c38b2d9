#!/usr/bin/env bash
# Compares herd with the asyncio and Node baselines (and a trivial echo
# server, the loopback limit) under the same loads, with herd-bench, and
# checks the performance targets of BENCHMARKS.md.
#
#   scripts/bench-compare.sh BASELINES_DIR [--runs R] [--quick] [--out FILE]
#       [--update-doc FILE] [--contenders herd,asyncio,node,echo]
#       [--loads LIST] [--duration S] [--warmup S] [--conns N] [--depth D]
#       [--rate R] [--whatsat-rate R] [--samples N] [--launches N]
#       [--fill-clients N] [--fill-baselines] [--idle N] [--no-build]
#       [--charts DIR]
#
# BASELINES_DIR holds asyncio_herd.py, node_herd.js and fake_places.py (the
# shared baselines folder). Each measurement starts the contender afresh on
# free loopback ports, runs one load, stops exactly the processes it started
# (by PID) and is repeated R times (default 3); the table shows medians, and
# herd/asyncio, herd/node and herd/loopback-limit ratios (throughput: above 1
# is better for herd; latency and memory: below 1 is better). A contender
# that does not start is skipped with a note. Every contender logs every
# message, as SPEC §7 asks.
#
# --quick         one run of each load, 2 s each, fewer samples: smoke test
# --out FILE      also write the report (markdown) to FILE
# --update-doc F  replace the part of F between the lines
#                 "<!-- bench-compare:begin -->" and "<!-- bench-compare:end -->"
#                 with the report (how BENCHMARKS.md is refreshed)
# --loads LIST    a subset of: iamat-herd, iamat-herd-spread, iamat-rate, iamat-single,
#                 propagate, whatsat-geonames, whatsat-geonames-rate,
#                 whatsat-google, whatsat-google-nocache, startup, fill, idle
# --whatsat-rate  open-loop WHATSAT rate of whatsat-geonames-rate (50000)
# --spread-clients N  clients per connection of iamat-herd-spread (1000000)
# --fill-clients  distinct clients of the memory load (1000000)
# --fill-baselines  run the memory load on the baselines too (slow)
# --idle N        idle connections of the idle load (20000; fewer if the
#                 open-file limit does not allow them, with a note)
# --charts DIR    where to write the charts, throughput.svg (herd against
#                 the baselines, per load) and propagation.svg (propagation
#                 latency by percentile): target/bench-compare by default
#
# Environment: HERD_BENCH and HERD_BIN override the binaries (else they are
# built with cargo); BENCH_THREADS sets herd-bench --threads (default 1);
# HERD_ADMIN=1 gives herd's servers admin ports (metrics, status).
set -uo pipefail

usage() { sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

# The command as run, with this machine's folders and files by their roles
# (the report goes into documents other machines read).
COMMAND_LINE="scripts/bench-compare.sh $(printf '%s ' "$@" | sed -E 's#^[^ -][^ ]* #BASELINES_DIR #; s#(--out|--update-doc|--charts) [^ ]+#\1 FILE#g; s# $##')"
ALL_LOADS="iamat-herd,iamat-herd-spread,iamat-rate,iamat-single,propagate,whatsat-geonames,whatsat-geonames-rate,whatsat-google,whatsat-google-nocache,startup,fill,idle"
BASELINES=""
RUNS=3
DURATION=10
WARMUP=2
CONNS=16
DEPTH=4
RATE=2000
WHATSAT_RATE=50000
SAMPLES=200
LAUNCHES=10
FILL_CLIENTS=1000000
SPREAD_CLIENTS=1000000
FILL_BASELINES=0
IDLE=20000
OUT=""
UPDATE_DOC=""
CHARTS=""
BUILD=1
CONTENDERS="herd,asyncio,node,echo"
LOADS="$ALL_LOADS"
QUICK=0
while (($#)); do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --quick) QUICK=1; RUNS=1; DURATION=2; WARMUP=0.5; SAMPLES=30; LAUNCHES=3; shift ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --depth) DEPTH="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --whatsat-rate) WHATSAT_RATE="$2"; shift 2 ;;
        --samples) SAMPLES="$2"; shift 2 ;;
        --launches) LAUNCHES="$2"; shift 2 ;;
        --fill-clients) FILL_CLIENTS="$2"; shift 2 ;;
        --spread-clients) SPREAD_CLIENTS="$2"; shift 2 ;;
        --fill-baselines) FILL_BASELINES=1; shift ;;
        --idle) IDLE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --update-doc) UPDATE_DOC="$2"; shift 2 ;;
        --charts) CHARTS="$2"; shift 2 ;;
        --contenders) CONTENDERS="$2"; shift 2 ;;
        --loads) LOADS="$2"; shift 2 ;;
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
for load in ${LOADS//,/ }; do
    [[ ",$ALL_LOADS," == *",$load,"* ]] || { echo "unknown load $load" >&2; usage; }
done
if [[ -n $UPDATE_DOC ]] && ! grep -q '^<!-- bench-compare:begin -->$' "$UPDATE_DOC" 2>/dev/null; then
    echo "$UPDATE_DOC has no <!-- bench-compare:begin --> line" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHARTS="${CHARTS:-$ROOT/target/bench-compare}"
mkdir -p "$CHARTS" && CHARTS="$(cd "$CHARTS" && pwd)" || { echo "cannot make $CHARTS" >&2; exit 2; }
BENCH_THREADS="${BENCH_THREADS:-1}"

say() { echo "bench-compare: $*" >&2; }
NOTES=()
note() { NOTES+=("$*"); say "note: $*"; }
wants() { [[ ",$CONTENDERS," == *",$1,"* ]]; }
load_wanted() { [[ ",$LOADS," == *",$1,"* ]]; }

# ---------------------------------------------------------------- binaries

if [[ -z ${HERD_BENCH:-} ]]; then
    HERD_BENCH="$ROOT/target/release/herd-bench"
    if ((BUILD)); then
        # The load tool is the workspace's bench/ package; its binary lands
        # in the workspace's target/ like herd's. Both are built with the
        # whole workspace's features (--workspace), as `cargo run --release`
        # builds herd, so that neither command builds herd a second time.
        (cd "$ROOT" && cargo build --release --workspace --bin herd-bench) >&2 \
            || { say "herd-bench does not build"; exit 1; }
    fi
fi
[[ -x $HERD_BENCH ]] || { say "no herd-bench at $HERD_BENCH"; exit 1; }
if wants herd && [[ -z ${HERD_BIN:-} ]]; then
    HERD_BIN="$ROOT/target/release/herd"
    if ((BUILD)); then
        (cd "$ROOT" && cargo build --release --workspace --bin herd) >&2 || note "herd does not build"
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

# Idle-heavy loads need descriptors, in herd-bench and in the servers, which
# inherit the limit. Raising the hard limit needs privileges (root with
# CAP_SYS_RESOURCE); raising the soft one to the hard one does not.
ulimit -Hn 100000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
IDLE_HELD="$IDLE"
if [[ $NOFILE != unlimited ]] && ((IDLE > NOFILE - 100)); then
    IDLE_HELD=$((NOFILE - 100))
    if load_wanted idle; then
        note "the open-file limit is $NOFILE and cannot be raised here (hard limit), so the idle load holds $IDLE_HELD connections instead of $IDLE: a server needs one descriptor per connection plus its own"
    fi
fi

WORK="$(mktemp -d /tmp/bench-compare.XXXXXX)"
RESULTS="$WORK/results.tsv"
STEAL="$WORK/steal.tsv"   # per herd-bench run: row, contender, run, % of CPU time stolen
PROPAGATION="$WORK/propagation.tsv"   # per propagation run: contender, percentile, ms
: >"$RESULTS"
# Private copies, so that a rebuild during the session changes nothing.
mkdir "$WORK/bin"
cp "$HERD_BENCH" "$WORK/bin/herd-bench" && HERD_BENCH="$WORK/bin/herd-bench"
if wants herd; then
    cp "$HERD_BIN" "$WORK/bin/herd" && HERD_BIN="$WORK/bin/herd"
fi
STARTED=()          # PIDs of everything this script started and has not stopped
declare -A SERVER_PID

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
DIR=""              # the folder of the contender configured last
PLACES_PORT=""
SERVER_NAMES=()

# configure CONTENDER TOPOLOGY PROVIDER: writes the config of a herd
# (TOPOLOGY "herd": the five servers of SPEC §1; "single": Hill alone) with
# PROVIDER "geonames", "google" (the fake places server) or "google-nocache"
# (the same with herd's answer cache off), on fresh ports, into a new DIR.
# Fills CLIENT_PORT, PLACES_PORT and SERVER_NAMES.
configure() {
    local contender="$1" topology="$2" provider="$3"
    local ports name i
    read -r -a ports <<<"$(free_ports 16)"
    DIR="$(mktemp -d "$WORK/$contender.XXXX")"
    SERVER_NAMES=("${NAMES[@]}")
    [[ $topology == single ]] && SERVER_NAMES=(Hill)
    CLIENT_PORT=()
    for i in "${!SERVER_NAMES[@]}"; do CLIENT_PORT[${SERVER_NAMES[$i]}]="${ports[$i]}"; done
    PLACES_PORT="${ports[10]}"
    case "$contender" in
        asyncio|node)
            {
                echo '{"servers": ['
                for i in "${!SERVER_NAMES[@]}"; do
                    ((i)) && echo ','
                    printf '{"name": "%s", "host": "127.0.0.1", "port": %s}' "${SERVER_NAMES[$i]}" "${ports[$i]}"
                done
                echo '], "links": ['
                if [[ $topology == herd ]]; then
                    echo '["Hill", "Jaquez"], ["Hill", "Smith"], ["Jaquez", "Singleton"],'
                    echo '["Smith", "Singleton"], ["Smith", "Campbell"], ["Campbell", "Singleton"]'
                fi
                printf '], "places": {"base_url": "http://127.0.0.1:%s", "key": "fake-key"},\n' "$PLACES_PORT"
                printf '"log_dir": "%s/logs"}\n' "$DIR"
            } >"$DIR/herd.json"
            ;;
        herd)
            {
                # Relative paths (data_dir: the durable store) are relative
                # to this file's folder, so everything stays in DIR.
                printf 'log_dir = "logs"\n\n[places]\n'
                case "$provider" in
                    google) printf 'provider = "google"\nbase_url = "http://127.0.0.1:%s"\nkey = "fake-key"\n' "$PLACES_PORT" ;;
                    google-nocache) printf 'provider = "google"\nbase_url = "http://127.0.0.1:%s"\nkey = "fake-key"\ncache_ttl_secs = 0\n' "$PLACES_PORT" ;;
                    *) printf 'provider = "geonames"\n' ;;
                esac
                for i in "${!SERVER_NAMES[@]}"; do
                    name="${SERVER_NAMES[$i]}"
                    printf '\n[[servers]]\nname = "%s"\nclient = "127.0.0.1:%s"\npeer = "127.0.0.1:%s"\n' \
                        "$name" "${ports[$i]}" "${ports[$((i + 5))]}"
                    if [[ ${HERD_ADMIN:-0} == 1 ]]; then
                        printf 'admin = "127.0.0.1:%s"\n' "${ports[$((i + 11))]}"
                    fi
                    if [[ $topology == herd ]]; then
                        printf 'neighbours = [%s]\n' "${NEIGHBOURS[$name]}"
                    else
                        printf 'neighbours = []\n'
                    fi
                done
            } >"$DIR/herd.toml"
            ;;
    esac
}

# server_command CONTENDER NAME: the command line that runs one server of
# the herd configured last, into the array CMD.
server_command() {
    case "$1" in
        asyncio) CMD=(python3 "$BASELINES/asyncio_herd.py" "$2" --config "$DIR/herd.json") ;;
        node) CMD=(node "$BASELINES/node_herd.js" "$2" --config "$DIR/herd.json") ;;
        # One thread per server, as `herd up` runs them: the contenders all
        # share this machine, where cross-thread wake-ups cost more than a
        # second worker gains (see BENCHMARKS.md).
        herd) CMD=("$HERD_BIN" serve "$2" --config "$DIR/herd.toml" --threads 1) ;;
    esac
}

# start CONTENDER TOPOLOGY PROVIDER: configures a herd and starts it (and
# the fake places server when someone may ask it); waits until every port
# accepts. Fills SERVER_PID too.
start() {
    local contender="$1" topology="$2" provider="$3"
    local name wait_ports=()
    configure "$@"
    SERVER_PID=()
    if [[ $contender == asyncio || $contender == node || $provider == google* ]]; then
        python3 "$BASELINES/fake_places.py" --port "$PLACES_PORT" \
            >"$DIR/places.out" 2>&1 &
        STARTED+=($!)
        wait_ports+=("$PLACES_PORT")
    fi
    case "$contender" in
        asyncio|node|herd)
            for name in "${SERVER_NAMES[@]}"; do
                server_command "$contender" "$name"
                # From the crate root, as a user would run it; exec so that
                # $! is the server itself.
                (cd "$ROOT" && HERD_SECRET="$SECRET" exec "${CMD[@]}") >"$DIR/$name.out" 2>&1 &
                STARTED+=($!)
                SERVER_PID[$name]=$!
            done
            ;;
        echo)
            "$HERD_BENCH" echo-server --addr "127.0.0.1:${CLIENT_PORT[Hill]}" --max-run 3600 \
                >"$DIR/echo.out" 2>&1 &
            STARTED+=($!)
            SERVER_PID[Hill]=$!
            ;;
    esac
    wait_ports+=("${CLIENT_PORT[@]}")
    if ! wait_ready "${wait_ports[@]}"; then
        local out
        for out in "$DIR"/*.out; do
            [[ -s $out ]] && say "$(basename "$out"): $(tail -n 3 "$out" | tr '\n' ' ')"
        done
        stop_started
        return 1
    fi
}
SECRET="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# ------------------------------------------------------------------- loads

# bench KIND ROW CONTENDER ARGS...: runs herd-bench once with ARGS (where
# @NAME stands for that server's client address and %NAME for its PID) and
# records the figures KIND keeps under ROW. Returns non-zero if the run
# does not count.
bench() {
    local kind="$1" row="$2" contender="$3"
    shift 3
    local json rc arg args=()
    for arg in "$@"; do
        case "$arg" in
            @*) args+=("127.0.0.1:${CLIENT_PORT[${arg#@}]}") ;;
            %*) args+=("${SERVER_PID[${arg#%}]}") ;;
            *) args+=("$arg") ;;
        esac
    done
    local before after
    before="$(head -n 1 /proc/stat)"
    json="$(cd "$ROOT" && HERD_SECRET="$SECRET" "$HERD_BENCH" --threads "$BENCH_THREADS" --json "${args[@]}" 2>"$WORK/bench.err")"
    rc=$?
    after="$(head -n 1 /proc/stat)"
    # The share of the machine's CPU time the hypervisor gave to others
    # meanwhile ("steal", the eighth figure of /proc/stat's cpu line): on a
    # shared host it moves latency tails more than anything measured here.
    awk -v row="$row" -v contender="$contender" -v run="$RUN" '
        NR == 1 { for (i = 2; i <= 9; i++) a[i] = $i }
        NR == 2 { for (i = 2; i <= 9; i++) { d = $i - a[i]; total += d; if (i == 9) steal = d }
                  if (total > 0) printf "%s\t%s\t%s\t%.1f\n", row, contender, run, 100 * steal / total }
    ' <(printf '%s\n%s\n' "$before" "$after") >>"$STEAL"
    if [[ -z $json ]]; then
        note "$contender, \"$row\": herd-bench failed: $(head -c 600 "$WORK/bench.err" | tr '\n' ' ')"
        return 1
    fi
    if ((rc != 0)); then
        note "$contender, \"$row\": run not counted, herd-bench found problems: $(
            python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("invalid","errors","unanswered","invalid_samples","error_samples","failures","idle_failed","first_failure","verify_failures") if k in d and d[k]})' <<<"$json" 2>/dev/null)"
        return 1
    fi
    printf '%s\n' "$json" >"$WORK/last.json"
    python3 - "$row" "$contender" "$kind" "$RESULTS" "$WORK/last.json" "$PROPAGATION" <<'EOF'
import json, sys
row, contender, kind, results, path, propagation = sys.argv[1:]
d = json.load(open(path))
ms = lambda summary, key: summary[key] / 1000
if kind == "load":
    figures = [("throughput (req/s)", d["throughput_rps"]),
               ("p50 latency (ms)", ms(d["latency_us"], "p50")),
               ("p99 latency (ms)", ms(d["latency_us"], "p99"))]
    if d.get("flooded_throughput_rps") is not None:
        figures += [("throughput until held by all (req/s)", d["flooded_throughput_rps"]),
                    ("held by all, after the last reply (s)", d["flooded_after_load_s"])]
elif kind == "rate":
    figures = [("p50 latency (ms)", ms(d["latency_us"], "p50")),
               ("p99 latency (ms)", ms(d["latency_us"], "p99"))]
elif kind == "prop":
    t = d["targets"][0]
    figures = [("p50 (ms)", ms(t["latency_us"], "p50")),
               ("p99 (ms)", ms(t["latency_us"], "p99")),
               ("IAMAT round trip p50 (ms)", ms(d["iamat_latency_us"], "p50")),
               ("IAMAT round trip p99 (ms)", ms(d["iamat_latency_us"], "p99")),
               ("mean time between polls (ms)", t["mean_poll_interval_us"] / 1000)]
    # The whole distribution, for the chart only.
    with open(propagation, "a") as f:
        for key, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"),
                           ("p99_9", "p99.9"), ("max", "max")):
            f.write("%s\t%s\t%r\n" % (contender, label, ms(t["latency_us"], key)))
elif kind == "startup":
    figures = [("launch to accepting, p50 (ms)", ms(d["accepting_us"], "p50")),
               ("launch to accepting, worst (ms)", ms(d["accepting_us"], "max")),
               ("launch to first AT reply, p50 (ms)", ms(d["answering_us"], "p50")),
               ("SIGTERM to exit, worst (ms)", ms(d["exit_after_sigterm_us"], "max"))]
elif kind == "fill":
    figures = [("clients/s", d["clients_per_second"]),
               ("RSS when filled (MiB)", d["server_memory_settled"]["rss_mib"]),
               ("RSS after a WHATSAT (MiB)", d["server_memory_after_whatsat"]["rss_mib"]),
               ("peak RSS (MiB)", d["server_memory_after_whatsat"]["peak_rss_mib"])]
elif kind == "idle":
    before = d["server_memory_before"]["rss_mib"]
    held = d["server_memory_held"]["rss_mib"]
    figures = [("RSS holding them (MiB)", held),
               ("RSS per idle connection (KiB)", (held - before) * 1024 / max(d["idle_opened"], 1)),
               ("probe p50 (ms)", ms(d["probe_while_held_us"], "p50")),
               ("probe p99 (ms)", ms(d["probe_while_held_us"], "p99"))]
with open(results, "a") as f:
    for metric, value in figures:
        f.write("%s\t%s\t%s\t%r\n" % (row, metric, contender, value))
EOF
}

# measure ROW CONTENDER TOPOLOGY PROVIDER KIND ARGS...: one run of one
# herd-bench command on a freshly started herd.
measure() {
    local row="$1" contender="$2" topology="$3" provider="$4" kind="$5"
    shift 5
    if ! start "$contender" "$topology" "$provider"; then
        note "$contender did not start for \"$row\" ($topology, $provider places) in run $RUN: skipped"
        return 1
    fi
    say "$row | $contender | run $RUN/$RUNS"
    local counted=0
    bench "$kind" "$row" "$contender" "$@" && counted=1
    # Stopped first, so that its log is complete.
    stop_started
    if ((counted)) && [[ $topology == herd && $kind == load ]]; then
        count_flooded "$row" "$contender"
    fi
    rm -rf "$DIR"
}

# count_flooded ROW CONTENDER: after a herd load, from Hill's log (every
# contender writes "sent to [peer ]NAME: AT ..." for each update it sends a
# neighbour, and "received ...: IAMAT ..." for each report), the updates Hill
# sent per IAMAT and neighbour: 1 when every report was flooded on every
# link, less when reports superseded before a link sent them were not.
count_flooded() {
    local row="$1" contender="$2" log share links
    # (Where each contender puts it under DIR differs.)
    log="$(find "$DIR" -name Hill.log -size +0 | head -n 1)"
    [[ -n $log ]] || return 0
    links="$(grep -o '"' <<<"${NEIGHBOURS[Hill]}" | wc -l)"
    share="$(LC_ALL=C awk -v links="$((links / 2))" '
        / sent to (peer )?[A-Za-z]+: AT / { sent++ }
        /received.*: IAMAT / { reports++ }
        END { if (reports > 0) print sent / reports / links }' "$log")"
    [[ -n $share ]] && printf '%s\t%s\t%s\t%s\n' "$row" \
        "updates Hill sent per IAMAT and link" "$contender" "$share" >>"$RESULTS"
}

# measure_startup ROW CONTENDER: one run of herd-bench startup, launching
# Hill of a five-server herd whose other servers are down (so it also
# starts dialling them).
measure_startup() {
    local row="$1" contender="$2"
    configure "$contender" herd geonames
    server_command "$contender" Hill
    say "$row | $contender | run $RUN/$RUNS"
    bench startup "$row" "$contender" startup --addr @Hill --launches "$LAUNCHES" -- "${CMD[@]}"
    rm -rf "$DIR"
}

# measure_fill ROW CONTENDER: one run of filling one server with distinct
# clients; for herd, then start-up with that store on disk.
measure_fill() {
    local row="$1" contender="$2"
    if ! start "$contender" single geonames; then
        note "$contender did not start for \"$row\" in run $RUN: skipped"
        return 1
    fi
    say "$row | $contender | run $RUN/$RUNS"
    bench fill "$row" "$contender" fill --addr @Hill --clients "$FILL_CLIENTS" --pid %Hill
    local filled=$?
    stop_started
    if [[ $contender == herd ]] && ((filled == 0)); then
        server_command herd Hill
        say "$ROW_STARTUP_FULL | herd | run $RUN/$RUNS"
        bench startup "$ROW_STARTUP_FULL" herd startup --addr @Hill \
            --launches "$((LAUNCHES < 3 ? LAUNCHES : 3))" --timeout 60 -- "${CMD[@]}"
    fi
    rm -rf "$DIR"
}

LOAD=(--conns "$CONNS" --depth "$DEPTH" --duration "$DURATION" --warmup "$WARMUP")
OPEN=(--conns "$CONNS" --duration "$DURATION" --warmup "$WARMUP")
ROW_HERD="IAMAT, five-server herd, load on Hill (${CONNS} conns x depth ${DEPTH}, a client each)"
ROW_HERD_SPREAD="IAMAT, five-server herd, load on Hill (${CONNS} conns x depth ${DEPTH}, ${SPREAD_CLIENTS} clients each)"
# Both herd rows ask the other four servers, after the load, until they hold
# every connection's last report: "until held by all" counts the flooding.
FLOODED=(--flooded-to @Jaquez --flooded-to @Smith --flooded-to @Campbell --flooded-to @Singleton)
# The one-server row is the one compared with the loopback limit, so the
# tool polls its sockets there instead of sleeping: on loopback a server's
# send wakes a sleeping tool from inside the server's own system call, a
# cost no client on another machine puts on it (BENCHMARKS.md). Only with
# one thread (--busy-poll keeps one thread busy), and only here: where the
# tool shares the CPUs with a whole herd, a spinning tool would take a CPU
# from it.
SINGLE_POLL=()
[[ $BENCH_THREADS == 1 ]] && SINGLE_POLL=(--busy-poll)
ROW_SINGLE="IAMAT, one server (${CONNS} conns x depth ${DEPTH}${SINGLE_POLL:+, load tool busy-polling})"
ROW_RATE="IAMAT at ${RATE}/s open loop, five-server herd, on Hill"
ROW_PROP="propagation Hill -> Campbell, light load (${SAMPLES} samples)"
ROW_WGEO="WHATSAT 10 km bound 5, one server, geonames (${CONNS} conns x depth ${DEPTH})"
ROW_WGEO_RATE="WHATSAT 10 km bound 5 at ${WHATSAT_RATE}/s open loop, one server, geonames"
ROW_WGOOGLE="WHATSAT 10 km bound 5, one server, fake Google places (${CONNS} conns x depth ${DEPTH})"
ROW_WGOOGLE_NOCACHE="WHATSAT as above, fake Google places, herd's answer cache off"
ROW_STARTUP="start-up of Hill (${LAUNCHES} launches per run)"
ROW_FILL="$(printf "%'d" "$FILL_CLIENTS" 2>/dev/null || echo "$FILL_CLIENTS") distinct clients into one server"
ROW_STARTUP_FULL="start-up of Hill with that store on disk"
ROW_IDLE="$(printf "%'d" "$IDLE_HELD" 2>/dev/null || echo "$IDLE_HELD") idle connections to one server (1000 probe IAMATs)"

MACHINE="$(
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'), herd $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) memory"
    echo "- Linux $(uname -r); $(rustc --version 2>/dev/null | cut -d' ' -f1-2); Python $(python3 -c 'import platform; print(platform.python_version())'); Node $(node --version 2>/dev/null || echo '(none)')"
    echo "- load average when the run began: $(cut -d' ' -f1-3 /proc/loadavg); open-file limit $NOFILE"
    echo "- herd-bench --threads $BENCH_THREADS; command: \`$COMMAND_LINE\`"
)"

# run_load LOAD CONTENDER: one run of one load on one contender, if that
# contender takes part in that load.
run_load() {
    local load="$1" contender="$2"
    case "$load:$contender" in
        iamat-herd:echo | propagate:echo | whatsat-*:echo | startup:echo | fill:echo | idle:echo) ;;
        whatsat-geonames*:asyncio | whatsat-geonames*:node) ;;
        whatsat-google-nocache:asyncio | whatsat-google-nocache:node) ;;
        fill:asyncio | fill:node) ((FILL_BASELINES)) && measure_fill "$ROW_FILL" "$contender" ;;
        fill:herd) measure_fill "$ROW_FILL" herd ;;
        startup:*) measure_startup "$ROW_STARTUP" "$contender" ;;
        iamat-herd-spread:echo) ;;
        iamat-herd:*) measure "$ROW_HERD" "$contender" herd geonames load iamat --addr @Hill "${LOAD[@]}" "${FLOODED[@]}" ;;
        iamat-herd-spread:*) measure "$ROW_HERD_SPREAD" "$contender" herd geonames load \
            iamat --addr @Hill "${LOAD[@]}" --clients "$SPREAD_CLIENTS" "${FLOODED[@]}" ;;
        # The echo server has no herd: its rate row is one server.
        iamat-rate:echo) measure "$ROW_RATE" echo single geonames rate iamat --addr @Hill "${OPEN[@]}" --rate "$RATE" ;;
        iamat-rate:*) measure "$ROW_RATE" "$contender" herd geonames rate iamat --addr @Hill "${OPEN[@]}" --rate "$RATE" ;;
        iamat-single:*) measure "$ROW_SINGLE" "$contender" single geonames load \
            iamat --addr @Hill "${LOAD[@]}" "${SINGLE_POLL[@]}" ;;
        # Each contender is observed through its cheapest WHATSAT: herd's
        # embedded places (the observer's own cost is not propagation), the
        # baselines' fake Google places (they have nothing else).
        propagate:herd) measure "$ROW_PROP" herd herd geonames prop \
            propagate --from @Hill --to @Campbell --samples "$SAMPLES" ;;
        propagate:*) measure "$ROW_PROP" "$contender" herd google prop \
            propagate --from @Hill --to @Campbell --samples "$SAMPLES" ;;
        whatsat-geonames:herd) measure "$ROW_WGEO" herd single geonames load \
            whatsat --addr @Hill "${LOAD[@]}" --radius 10 --bound 5 ;;
        whatsat-geonames-rate:herd) measure "$ROW_WGEO_RATE" herd single geonames rate \
            whatsat --addr @Hill "${OPEN[@]}" --rate "$WHATSAT_RATE" --radius 10 --bound 5 ;;
        whatsat-google:*) measure "$ROW_WGOOGLE" "$contender" single google load \
            whatsat --addr @Hill "${LOAD[@]}" --radius 10 --bound 5 ;;
        whatsat-google-nocache:herd) measure "$ROW_WGOOGLE_NOCACHE" herd single google-nocache load \
            whatsat --addr @Hill "${LOAD[@]}" --radius 10 --bound 5 ;;
        idle:*) measure "$ROW_IDLE" "$contender" single geonames idle \
            conns --addr @Hill --idle "$IDLE_HELD" --pid %Hill ;;
    esac
}

# Run-major order: each load's contenders run one after another, and each
# contender's runs are spread over the whole session, so that a change in
# the machine's background load affects every contender alike.
for ((RUN = 1; RUN <= RUNS; RUN++)); do
    for load in ${ALL_LOADS//,/ }; do
        load_wanted "$load" || continue
        for contender in herd asyncio node echo; do
            wants "$contender" && run_load "$load" "$contender"
        done
    done
done
if [[ -s $STEAL ]]; then
    note "$(sort -t$'\t' -k4,4g "$STEAL" | awk -F'\t' '
        { v[NR] = $4; worst = $0 }
        END { split(worst, w, "\t")
              printf "CPU time stolen by the host (another guest running) during the measured runs: median %.1f %%, highest %.1f %% (%s, %s, run %s)", v[int((NR + 1) / 2)], w[4], w[1], w[2], w[3] }')"
fi
if load_wanted fill && ((!FILL_BASELINES)) && { wants asyncio || wants node; }; then
    note "the memory load ran on herd only (--fill-baselines runs it on the baselines too, slowly)"
fi

# ------------------------------------------------------------------- report

REPORT="$WORK/report.md"
python3 - "$RESULTS" "$STEAL" "$RUNS" "$WHATSAT_RATE" "$FILL_CLIENTS" "$IDLE" "$IDLE_HELD" "$SPREAD_CLIENTS" \
    "$ROW_HERD" "$ROW_HERD_SPREAD" "$ROW_RATE" "$ROW_SINGLE" "$ROW_PROP" "$ROW_WGEO" "$ROW_WGEO_RATE" \
    "$ROW_WGOOGLE" "$ROW_WGOOGLE_NOCACHE" "$ROW_STARTUP" "$ROW_FILL" "$ROW_STARTUP_FULL" \
    "$ROW_IDLE" >"$REPORT.table" <<'EOF'
import statistics, sys
results, steal_path, runs, whatsat_rate, fill_clients, idle_wanted, idle_held, spread_clients, *rows = sys.argv[1:]
(ROW_HERD, ROW_HERD_SPREAD, ROW_RATE, ROW_SINGLE, ROW_PROP, ROW_WGEO, ROW_WGEO_RATE, ROW_WGOOGLE,
 ROW_WGOOGLE_NOCACHE, ROW_STARTUP, ROW_FILL, ROW_STARTUP_FULL, ROW_IDLE) = rows
runs = int(runs)
values = {}
order = []
for line in open(results):
    row, metric, contender, value = line.rstrip("\n").split("\t")
    if (row, metric) not in values:
        order.append((row, metric))
    values.setdefault((row, metric), {}).setdefault(contender, []).append(float(value))
# The baselines have no answer cache: their figures with it "off" are the
# same measurement as with it on.
for (row, metric) in list(order):
    if row == ROW_WGOOGLE and (ROW_WGOOGLE_NOCACHE, metric) in values:
        for c in ("asyncio", "node"):
            if c in values[(row, metric)]:
                values[(ROW_WGOOGLE_NOCACHE, metric)].setdefault(c, values[(row, metric)][c])

# The host's share of the CPU time during each run (see `bench`), shown
# with every run: a run with much stolen is one to read with care.
STOLEN = "CPU time stolen by the host (%)"
stolen = {}
try:
    for line in open(steal_path):
        row, contender, run, share = line.rstrip("\n").split("\t")
        stolen.setdefault(row, {}).setdefault(contender, []).append(float(share))
except FileNotFoundError:
    pass

def med(row, metric, contender="herd"):
    v = values.get((row, metric), {}).get(contender)
    return statistics.median(v) if v else None

def show(v):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return "{:,.0f}".format(v)
    if abs(v) >= 10:
        return "%.1f" % v
    if abs(v) >= 1:
        return "%.2f" % v
    return "%.3f" % v

def ratio(a, b):
    if a is None or not b:
        return "—"
    r = a / b
    return "%.0f×" % r if r >= 100 else "%.1f×" % r if r >= 10 else "%.2f×" % r

cols = ["herd", "asyncio", "node", "echo"]
FLOODED_SHARE = "updates Hill sent per IAMAT and link"
print("| load | metric | herd | asyncio | node | loopback limit | herd/asyncio | herd/node | herd/limit |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for row in rows:
    for (r, metric) in order:
        if r != row:
            continue
        m = {c: med(row, metric, c) for c in cols}
        cells = []
        for c in cols:
            cell = show(m[c])
            n = len(values[(row, metric)].get(c, []))
            if m[c] is not None and n < runs:
                cell += " (%d/%d runs)" % (n, runs)
            cells.append(cell)
        # A count, not a speed: no ratios.
        r = ratio if metric != FLOODED_SHARE else (lambda a, b: "—")
        print("| %s | %s | %s | %s | %s | %s |" % (row, metric, " | ".join(cells),
              r(m["herd"], m["asyncio"]), r(m["herd"], m["node"]), r(m["herd"], m["echo"])))
if runs > 1:
    print()
    print("<details><summary>every run</summary>")
    print()
    print("| load | metric | herd | asyncio | node | loopback limit |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for (r, metric) in order:
            if r != row:
                continue
            cells = [" / ".join(show(v) for v in values[(row, metric)].get(c, [])) or "—"
                     for c in cols]
            print("| %s | %s | %s |" % (row, metric, " | ".join(cells)))
        if row in stolen:
            cells = [" / ".join("%.1f" % v for v in stolen[row].get(c, [])) or "—" for c in cols]
            print("| %s | %s | %s |" % (row, STOLEN, " | ".join(cells)))
    print()
    print("</details>")
print()
print("Medians of %d run(s) each; every run starts the contender afresh, logging every" % runs)
print("message. Throughput ratios above 1 favour herd; latency and memory ratios below 1 do.")
print("Open-loop latency is counted from each request's intended send time. Propagation is")
print("from writing the IAMAT to Hill until Campbell answers a WHATSAT with it (2 WHATSATs")
print("for 0.001 km, bound 1, kept in flight back to back: herd's through its embedded places,")
print("the baselines' through fake Google places); it includes about one small round trip (the")
print("IAMAT round trip, shown) and up to one poll interval (shown). The loopback limit is")
print("herd-bench's own echo server (one thread, no state, no flooding, no log); in that")
print("one-server row the load tool busy-polls (never sleeps), so that no server pays, inside")
print("its own sends, for waking the tool, which a client on another machine would not cost it.")
print("\"Until held by all\" divides every reply of a run by the time from its first request until")
print("the other four servers all held every connection's last report (asked with WHATSATs")
print("after the load). With a client per connection each IAMAT replaces its connection's last")
print("one, which a herd may then flood only once; with %s clients per connection no client" % "{:,}".format(int(spread_clients)))
print("reports twice in a run, so every report is one the herd must spread. \"Updates Hill sent")
print("per IAMAT and link\" counts, in Hill's log, the updates it sent its two neighbours: 1 when")
print("every report went down every link, less when some were superseded before a link sent them.")

# Targets: (what, measured text, met?) with None when not measured.
targets = []
def target(what, value_text, met, full=True):
    verdict = "—" if met is None else ("met" if met else "**not met**")
    if met is not None and not full:
        verdict += " (smaller load, see notes)"
    targets.append((what, value_text, verdict))

tput = "throughput (req/s)"
held = "throughput until held by all (req/s)"
# The flooded row's goals are the routing's (every report must reach four
# servers); a client per connection keeps the earlier goals.
for row, label, vs_a, vs_n in ((ROW_HERD_SPREAD, "every report flooded", 50, 20),
                               (ROW_HERD, "a client per connection", 40, 15)):
    h, a, n = (med(row, held, c) for c in ("herd", "asyncio", "node"))
    target("IAMAT throughput until held by all, five-server herd (%s), vs asyncio ≥ %d×" % (label, vs_a),
           ratio(h, a), None if None in (h, a) else h / a >= vs_a)
    target("IAMAT throughput until held by all, five-server herd (%s), vs node ≥ %d×" % (label, vs_n),
           ratio(h, n), None if None in (h, n) else h / n >= vs_n)
h, e = med(ROW_SINGLE, tput), med(ROW_SINGLE, tput, "echo")
target("IAMAT throughput, one server, ≥ 60 % of the echo server",
       "—" if None in (h, e) else "%.0f %% (%s vs %s req/s)" % (100 * h / e, show(h), show(e)),
       None if None in (h, e) else h / e >= 0.6)
p99 = med(ROW_PROP, "p99 (ms)")
rtt = med(ROW_PROP, "IAMAT round trip p50 (ms)")
target("propagation Hill → Campbell p99 < 0.5 ms (light load)",
       "—" if p99 is None else "%s ms (IAMAT round trip p50 %s ms)" % (show(p99), show(rtt)),
       None if p99 is None else p99 < 0.5)
w = med(ROW_WGEO, tput)
target("WHATSAT, geonames, one server ≥ 100,000/s",
       "—" if w is None else "%s/s" % show(w), None if w is None else w >= 100000)
w = med(ROW_WGEO_RATE, "p99 latency (ms)")
target("WHATSAT, geonames, p99 < 2 ms at %s/s open loop" % whatsat_rate,
       "—" if w is None else "%s ms" % show(w), None if w is None else w < 2)
for row, label in ((ROW_WGOOGLE, "answer cache on"), (ROW_WGOOGLE_NOCACHE, "answer cache off")):
    h, a, n = (med(row, tput, c) for c in ("herd", "asyncio", "node"))
    target("WHATSAT through fake Google places (%s) ahead of both baselines" % label,
           "—" if None in (h, a, n) else "%s vs %s (asyncio), %s (node) req/s" % (show(h), show(a), show(n)),
           None if None in (h, a, n) else h > a and h > n)
rss = med(ROW_FILL, "RSS after a WHATSAT (MiB)")
full = int(fill_clients) >= 1000000
target("%s distinct clients in one server < 300 MB RSS" % "{:,}".format(int(fill_clients)),
       "—" if rss is None else "%s MiB (%s MB)" % (show(rss), show(rss * 1.048576)),
       None if rss is None else rss * 1.048576 < 300, full)
rss = med(ROW_IDLE, "RSS holding them (MiB)")
probe = med(ROW_IDLE, "probe p99 (ms)")
probe50 = med(ROW_IDLE, "probe p50 (ms)")
full = int(idle_held) >= 20000
target("%s idle connections < 200 MB RSS" % "{:,}".format(int(idle_held)),
       "—" if rss is None else "%s MiB (%s MB)" % (show(rss), show(rss * 1.048576)),
       None if rss is None else rss * 1.048576 < 200, full)
target("probe answered in < 1 ms while they are held (p99)",
       "—" if probe is None else "p99 %s ms, p50 %s ms" % (show(probe), show(probe50)),
       None if probe is None else probe < 1, full)
worst = med(ROW_STARTUP, "launch to accepting, worst (ms)")
p50 = med(ROW_STARTUP, "launch to accepting, p50 (ms)")
target("start-up: launch to accepting < 100 ms (worst launch)",
       "—" if worst is None else "worst %s ms, p50 %s ms" % (show(worst), show(p50)),
       None if worst is None else worst < 100)
print()
print("| target | herd measured | |")
print("|---|---|---|")
for what, value, met in targets:
    print("| %s | %s | %s |" % (what, value, met))
print()
print("— : not measured in this run.")
EOF

{
    echo "Machine and run:"
    echo
    echo "$MACHINE"
    echo "- load average when it ended: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    cat "$REPORT.table"
    if ((${#NOTES[@]})); then
        echo
        echo "Notes:"
        echo
        printf -- '- %s\n' "${NOTES[@]}" | awk '!seen[$0]++'
    fi
} >"$REPORT"
cat "$REPORT"
[[ -n $OUT ]] && cp "$REPORT" "$OUT"

# ------------------------------------------------------------------ charts

# The medians of the table, as herd-bench chart reads them (group, series,
# value): throughput per load and contender, and propagation latency per
# percentile and contender.
python3 - "$RESULTS" "$PROPAGATION" "$WORK/throughput.chart" "$WORK/propagation.chart" <<'EOF'
import statistics, sys
results, propagation, throughput_out, propagation_out = sys.argv[1:]
NAMES = {"herd": "herd", "asyncio": "asyncio", "node": "node", "echo": "loopback limit"}
METRICS = {"throughput (req/s)": "", "throughput until held by all (req/s)": ", until held by all"}
def medians(rows):
    values = {}
    for key, contender, value in rows:
        values.setdefault(key, {}).setdefault(contender, []).append(value)
    return [(key, contender, statistics.median(v))
            for key, by in values.items() for contender in NAMES if (v := by.get(contender))]
def throughput():
    for line in open(results):
        row, metric, contender, value = line.rstrip("\n").split("\t")
        if metric in METRICS and float(value) > 0:
            yield row + METRICS[metric], contender, float(value)
def latency():
    try:
        for line in open(propagation):
            contender, percentile, value = line.rstrip("\n").split("\t")
            yield percentile, contender, float(value)
    except FileNotFoundError:
        return
for rows, out in ((throughput(), throughput_out), (latency(), propagation_out)):
    with open(out, "w") as f:
        for group, contender, value in medians(rows):
            f.write("%s\t%s\t%r\n" % (group, NAMES[contender], value))
EOF
CHARTED=()
# Each contender keeps its colour whoever took part.
SERIES=(--series "herd,asyncio,node,loopback limit")
if [[ -s $WORK/throughput.chart ]] && "$HERD_BENCH" chart "${SERIES[@]}" --log --unit req/s \
    --title "Throughput: herd against the baselines (medians of $RUNS run(s))" \
    <"$WORK/throughput.chart" >"$CHARTS/throughput.svg"; then
    CHARTED+=(throughput.svg)
fi
if [[ -s $WORK/propagation.chart ]] && "$HERD_BENCH" chart "${SERIES[@]}" --unit ms \
    --title "Propagation Hill -> Campbell, light load: latency by percentile (medians of $RUNS run(s))" \
    <"$WORK/propagation.chart" >"$CHARTS/propagation.svg"; then
    CHARTED+=(propagation.svg)
fi
if ((${#CHARTED[@]})); then
    say "charts in $CHARTS: ${CHARTED[*]}"
else
    say "no charts: no throughput or propagation figures in this run"
fi
if [[ -n $UPDATE_DOC ]]; then
    python3 - "$UPDATE_DOC" "$REPORT" <<'EOF'
import re
import sys
doc, report = sys.argv[1:]
text = open(doc).read()
begin, end = "<!-- bench-compare:begin -->\n", "<!-- bench-compare:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
# Each run's own figures stay in --out: the document keeps the medians.
report = re.sub(r"<details><summary>every run</summary>.*?</details>\n\n", "",
                open(report).read(), flags=re.S)
open(doc, "w").write(head + begin + "\n" + report + "\n" + end + tail)
EOF
    say "updated $UPDATE_DOC"
fi
