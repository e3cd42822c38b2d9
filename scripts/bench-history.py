#!/usr/bin/env python3
"""The archive on and off: what the core database costs the herd.

    scripts/bench-history.py [--runs R] [--duration S] [--warmup S]
        [--conns N] [--depth D] [--variants off,sqlite,postgres]
        [--out FILE] [--no-build]

For each variant (no [history]; [history] on SQLite; [history] on a
PostgreSQL this script starts for itself, with PostGIS where installed),
on a freshly started five-server herd (SPEC's, each server --threads 1):

1. Peak: IAMAT throughput at Hill, closed loop (herd-bench iamat, every
   report a new one of its client, so each is archived).
2. CPU per archived report: Hill's archive thread's CPU time over the
   rows once caught up; for PostgreSQL also its server processes' over
   the rows when the load ends (before this script's counting queries).
3. Bytes per archived report: once the archive has caught up (its row
   count still for 1.5 s), the database's size over its rows (SQLite: the
   file after a WAL checkpoint; PostgreSQL: pg_total_relation_size of
   `reports`, indexes included, WAL not).
4. Half peak: an open-loop IAMAT load at half the median peak of the
   archive off, with a probe client sending one IAMAT every 20 ms to
   Hill; archive lag is from the probe's AT reply to its row committed
   (SQLite: the first poll, every 2 ms, that sees it; PostgreSQL: the
   commit time PostgreSQL records, track_commit_timestamp). A negative
   lag would mean committed before the reply was sent.

The variants alternate within each run; figures are medians over R runs.
PostgreSQL runs from Debian's binaries (/usr/lib/postgresql/*/bin) in a
temporary folder, on a Unix socket only, as nobody when run as root; each
run gets a database of its own. The script stops exactly the processes it
started (by PID). HERD_BIN and HERD_BENCH name other binaries (then
--no-build). Nothing here asserts a figure: the report is the output.
"""

import argparse
import glob
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import benchlib
from benchlib import DEFAULT_HERD, ROOT, fmt, free_ports, median

PROBE_PREFIX = "lagprobe"
PROBE_EVERY = 0.02
POLL_EVERY = 0.002
NAMES = {"off": "archive off", "sqlite": "SQLite", "postgres": "PostgreSQL"}


def say(*args):
    benchlib.say("bench-history", *args)


def bench(bench_bin, args):
    return benchlib.bench(bench_bin, args, "bench-history")


class Postgres:
    """A PostgreSQL server of this script's own, on a Unix socket."""

    def __init__(self, workdir):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[-3]))
        if not bins:
            raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
        self.bin = os.path.dirname(bins[-1])
        self.dir = tempfile.mkdtemp(prefix="pg", dir=workdir)
        self.socket = os.path.join(self.dir, "socket")
        os.mkdir(self.socket)
        self.port = free_ports(1)[0]
        self.user = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.user = (nobody.pw_uid, nobody.pw_gid)
            for path in (self.dir, self.socket):
                os.chown(path, *self.user)
        self.run("initdb", "-D", os.path.join(self.dir, "data"), "-U", "herd",
                 "--auth=trust", "-E", "UTF8", "--no-sync")
        self.log = open(os.path.join(self.dir, "postgres.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(self.bin, "postgres"), "-D", os.path.join(self.dir, "data"),
             "-k", self.socket, "-p", str(self.port), "-c", "listen_addresses=",
             # The commit time of each row, for the archive lag.
             "-c", "track_commit_timestamp=on"],
            stdout=self.log, stderr=subprocess.STDOUT, **self.as_owner())
        deadline = time.time() + 30
        while self.psql("postgres", "SELECT 1", check=False) is None:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("postgres did not start: " + self.tail())
            time.sleep(0.1)
        self.postgis = self.psql(
            "postgres", "SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'") == "1"

    def as_owner(self):
        if self.user is None:
            return {}
        return {"user": self.user[0], "group": self.user[1], "extra_groups": []}

    def run(self, name, *args):
        subprocess.run([os.path.join(self.bin, name), *args], check=True,
                       stdout=subprocess.DEVNULL, cwd=self.dir, **self.as_owner())

    def psql(self, database, sql, check=True):
        out = subprocess.run(
            [os.path.join(self.bin, "psql"), "-h", self.socket, "-p", str(self.port),
             "-U", "herd", "-d", database, "-XAtq", "-c", sql],
            capture_output=True, text=True)
        if out.returncode != 0:
            if check:
                raise RuntimeError(f"psql {sql!r}: {out.stderr.strip()}")
            return None
        return out.stdout.strip()

    def url(self, database):
        return f"host={self.socket} port={self.port} user=herd dbname={database}"

    def tail(self):
        with open(os.path.join(self.dir, "postgres.log"), errors="replace") as f:
            return f.read()[-600:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Archive:
    """What one variant's database holds, as this script reads it."""

    def __init__(self, variant, herd=None, pg=None, database=None):
        self.variant, self.pg, self.database = variant, pg, database
        self.path = herd and os.path.join(herd.dir, "data", "history.sqlite")

    def rows(self):
        if self.variant == "sqlite":
            try:
                with sqlite3.connect(self.path) as db:
                    return db.execute("SELECT count(*) FROM reports").fetchone()[0]
            except sqlite3.Error:
                return 0
        value = self.pg.psql(self.database, "SELECT count(*) FROM reports", check=False)
        return int(value) if value else 0

    def settle(self, patience=180):
        """Waits until the row count holds still for 1.5 s; the count."""
        last, since, deadline = -1, time.time(), time.time() + patience
        while time.time() < deadline:
            rows = self.rows()
            if rows != last:
                last, since = rows, time.time()
            elif time.time() - since >= 1.5:
                return rows
            time.sleep(0.1)
        say(f"{self.variant}: the archive was still moving after {patience} s")
        return last

    def bytes(self):
        if self.variant == "sqlite":
            with sqlite3.connect(self.path) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return os.path.getsize(self.path)
        return int(self.pg.psql(self.database, "SELECT pg_total_relation_size('reports')"))

    def commit_times(self):
        """PostgreSQL: each probe's commit time (s since 1970), by client id."""
        out = self.pg.psql(
            self.database,
            "SELECT convert_from(client_id, 'UTF8'), "
            "extract(epoch from pg_xact_commit_timestamp(xmin)) FROM reports "
            f"WHERE client_id >= '\\x{PROBE_PREFIX.encode().hex()}'::bytea "
            f"AND client_id < '\\x{PROBE_PREFIX.encode().hex()}ff'::bytea")
        times = {}
        for line in out.splitlines():
            client, committed = line.split("|")
            times[client] = float(committed)
        return times


def probe(addr, stop, replied):
    """Sends one IAMAT every PROBE_EVERY s until `stop`; notes each reply's time."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as conn:
        reader = conn.makefile("rb")
        i = 0
        while not stop.is_set():
            client = f"{PROBE_PREFIX}{i:07d}"
            conn.sendall(f"IAMAT {client} +34.068930-118.445127 {time.time():.9f}\n".encode())
            line = reader.readline()
            now = time.time()
            if line.startswith(b"AT "):
                replied[client] = now
            i += 1
            stop.wait(PROBE_EVERY)


def poll_sqlite(path, stop, seen):
    """Notes when each probe's row is first visible in the SQLite file."""
    low, high = PROBE_PREFIX.encode(), PROBE_PREFIX.encode() + b"\xff"
    last = 0
    while not os.path.exists(path) and not stop.is_set():
        time.sleep(POLL_EVERY)
    db = sqlite3.connect(path, isolation_level=None)
    while not stop.is_set():
        try:
            # One snapshot: the newest id and the probes up to it.
            db.execute("BEGIN")
            top = db.execute("SELECT max(id) FROM reports").fetchone()[0] or 0
            rows = db.execute(
                "SELECT CAST(client_id AS TEXT) FROM reports "
                "WHERE id > ? AND id <= ? AND client_id >= ? AND client_id < ?",
                (last, top, low, high)).fetchall()
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK") if db.in_transaction else None
            time.sleep(POLL_EVERY)
            continue
        now = time.time()
        for (client,) in rows:
            seen.setdefault(client, now)
        last = top
        time.sleep(POLL_EVERY)
    db.close()


def cpu_seconds(pid, thread=None, children=False):
    """CPU time (user + system) of process `pid`: of its thread named
    `thread` only, if given; with its waited-for children's if `children`
    (PostgreSQL's backends end as children of the postmaster)."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(path):
        stat = open(path).read()
        return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()

    if thread is not None:
        for tid in os.listdir(f"/proc/{pid}/task"):
            comm, f = fields(f"/proc/{pid}/task/{tid}/stat")
            if comm == thread:
                return (int(f[11]) + int(f[12])) / tick
        return None
    _, f = fields(f"/proc/{pid}/stat")
    total = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    if children:
        for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
            try:
                total += sum(int(x) for x in fields(f"/proc/{child}/stat")[1][11:15])
            except OSError:
                pass  # ended meanwhile, and counted with the waited-for
    return total / tick


def percentile(values, p):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_variant(variant, phase, args, bins, workdir, pg, rate=None):
    """One phase ("peak" or "half") of one variant on a fresh herd: its figures."""
    herd_bin, bench_bin = bins
    database = None
    if variant == "off":
        history = ""
    elif variant == "sqlite":
        history = '[history]\ndatabase = "sqlite"\n'
    else:
        database = f"bench_{phase}_{time.time_ns() % 10**12}"
        pg.psql("postgres", f"CREATE DATABASE {database}")
        history = f'[history]\ndatabase = "postgres"\nurl = "{pg.url(database)}"\n'
    figures = {}
    herd = benchlib.Herd(herd_bin, DEFAULT_HERD, workdir, history)
    try:
        herd.start_all()
        archive = Archive(variant, herd, pg, database)
        load = ["iamat", "--addr", herd.addr("Hill"), "--conns", str(args.conns),
                "--duration", str(args.duration), "--clients", "1000000"]
        database_cpu = cpu_seconds(pg.proc.pid, children=True) if variant == "postgres" else 0
        if phase == "peak":
            peak = bench(bench_bin, load + ["--depth", str(args.depth),
                                            "--warmup", str(args.warmup)])
            if variant == "postgres":
                # Read before the count, and before settling: this
                # script's own queries are the database's work too.
                used = cpu_seconds(pg.proc.pid, children=True) - database_cpu
                so_far = archive.rows()
                figures["database_us"] = used * 1e6 / so_far if so_far else None
            figures["peak"] = peak["throughput_rps"]
            figures["peak_p99"] = peak["latency_us"]["p99"] / 1000
            if variant != "off":
                rows = archive.settle()
                figures["rows"] = rows
                figures["bytes"] = archive.bytes() / rows if rows else None
                if rows:
                    archiver = cpu_seconds(herd.procs["Hill"].pid, thread="herd-archive")
                    figures["archiver_us"] = archiver * 1e6 / rows if archiver else None

            return figures
        stop_probe, stop_poll, replied, seen = threading.Event(), threading.Event(), {}, {}
        prober = threading.Thread(target=probe, args=(herd.addr("Hill"), stop_probe, replied))
        poller = threading.Thread(target=poll_sqlite, args=(archive.path, stop_poll, seen))
        prober.start()
        if variant == "sqlite":
            poller.start()
        try:
            half = bench(bench_bin, load + ["--rate", str(rate), "--warmup", "0.5"])
        finally:
            stop_probe.set()
            prober.join()
            if variant != "off":
                # The last probes reach the database, seen as they do.
                archive.settle()
            stop_poll.set()
            if poller.is_alive():
                poller.join()
        figures["half_p99"] = half["latency_us"]["p99"] / 1000
        if variant == "off":
            return figures
        if variant == "postgres":
            seen = archive.commit_times()
        lags = [(seen[c] - replied[c]) * 1000 for c in replied if c in seen]
        figures["lag_p50"] = percentile(lags, 50)
        figures["lag_p99"] = percentile(lags, 99)
        figures["lag_samples"] = len(lags)
        figures["lag_missing"] = len(replied) - len(lags)
    finally:
        herd.stop_all()
        shutil.rmtree(herd.dir, ignore_errors=True)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--variants", default="off,sqlite,postgres")
    parser.add_argument("--out")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    variants = args.variants.split(",")
    for v in variants:
        if v not in NAMES:
            parser.error(f"unknown variant {v}")
    herd_bin = os.environ.get("HERD_BIN") or os.path.join(ROOT, "target/release/herd")
    bench_bin = os.environ.get("HERD_BENCH") or os.path.join(ROOT, "target/release/herd-bench")
    if not args.no_build and not os.environ.get("HERD_BIN"):
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bin", "herd",
                        "--bin", "herd-bench"], cwd=ROOT, check=True)
    notes = []
    with tempfile.TemporaryDirectory(prefix="bench-history") as workdir:
        os.chmod(workdir, 0o755)
        pg = None
        if "postgres" in variants:
            try:
                pg = Postgres(workdir)
                notes.append("PostgreSQL with PostGIS (a geography column and its GiST index)"
                             if pg.postgis else "PostgreSQL without PostGIS (plain columns)")
            except (RuntimeError, subprocess.CalledProcessError) as error:
                notes.append(f"PostgreSQL skipped: {error}")
                variants.remove("postgres")
        results = {v: [] for v in variants}
        rate = None
        try:
            for run in range(args.runs):
                for variant in variants:
                    say(f"run {run + 1}/{args.runs}: {NAMES[variant]}, peak")
                    results[variant].append(
                        run_variant(variant, "peak", args, (herd_bin, bench_bin), workdir, pg))
                if rate is None:
                    # Half the first variant's peak (the archive off's, by
                    # default), the same for every variant and run.
                    rate = max(1, int(results[variants[0]][0]["peak"] / 2))
                for variant in variants:
                    say(f"run {run + 1}/{args.runs}: {NAMES[variant]}, {rate} IAMAT/s")
                    results[variant][-1].update(
                        run_variant(variant, "half", args, (herd_bin, bench_bin), workdir, pg,
                                    rate))
        finally:
            if pg:
                pg.stop()

    def med(variant, key):
        return median([f.get(key) for f in results[variant]])

    off = med("off", "peak") if "off" in results else None
    lines = [f"Archive on and off ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{args.runs} run(s), medians; `{' '.join(sys.argv)}`)", "",
             "| | " + " | ".join(NAMES[v] for v in variants) + " |",
             "|---|" + "---:|" * len(variants)]

    def row(label, cells):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("IAMAT throughput at Hill, five-server herd (req/s)",
        [fmt(med(v, "peak")) for v in variants])
    if off:
        row("against the archive off",
            [("—" if v == "off" or med(v, "peak") is None
              else f"{100 * (med(v, 'peak') / off - 1):+.1f} %") for v in variants])
    row("reply p99 at peak (ms)", [fmt(med(v, "peak_p99"), 2) for v in variants])
    row(f"reply p99 at half peak, {fmt(rate)} req/s (ms)",
        [fmt(med(v, "half_p99"), 2) for v in variants])
    row("archive lag p50, AT reply to committed row (ms)",
        ["—" if v == "off" else fmt(med(v, "lag_p50"), 1) for v in variants])
    row("archive lag p99 (ms)",
        ["—" if v == "off" else fmt(med(v, "lag_p99"), 1) for v in variants])
    row("CPU per archived report: Hill's archive thread (µs)",
        ["—" if v == "off" else fmt(med(v, "archiver_us"), 2) for v in variants])
    if "postgres" in variants:
        row("CPU per archived report: the PostgreSQL server (µs)",
            ["—" if v != "postgres" else fmt(med(v, "database_us"), 2) for v in variants])
    row("bytes per archived report on disk",
        ["—" if v == "off" else fmt(med(v, "bytes")) for v in variants])
    row("reports archived per run",
        ["—" if v == "off" else fmt(med(v, "rows")) for v in variants])
    missing = sum(f.get("lag_missing", 0) for v in variants for f in results[v])
    samples = [f.get("lag_samples", 0) for v in variants if v != "off" for f in results[v]]
    lines += ["", f"Lag from {min(samples, default=0)}–{max(samples, default=0)} probes a run "
              f"(one IAMAT every {PROBE_EVERY * 1000:.0f} ms)"
              + (f"; {missing} probe(s) never seen archived." if missing else ".")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
