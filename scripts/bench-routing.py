#!/usr/bin/env python3
"""Flooding under failure and at size: herd against another herd binary.

    scripts/bench-routing.py [--old-bin PATH] [--runs R] [--sizes 5,10,20,50]
        [--topology random:3:1] [--samples N] [--rate R] [--duration S]
        [--out FILE] [--no-build]

Runs, for the herd built from this tree and (with --old-bin) another herd
binary, in the same run:

1. The default five-server herd: propagation latency (herd-bench propagate,
   IAMAT at one server, WHATSATs at every other until they show it) healthy,
   then with each server killed in turn (SIGKILL; the report is made at Hill,
   or at Jaquez when Hill is the one killed).
2. Generated herds (`herd config --servers N --topology T`) of each size,
   at steady state (an open-loop IAMAT load at S01 of --rate per second,
   each report from one of many clients, so every one must be flooded):
   payload messages per update over the minimum N-1 (the "sent to" lines
   of every server's log over the IAMATs answered), watermark bytes per
   update (announcement bytes in older builds; from the counters a server
   logs when it stops, where it has them), propagation p50/p99 from S01 to the farthest server; then, on a
   fresh herd, the IAMAT throughput the whole herd keeps up with
   (herd-bench iamat --flooded-to the farthest).

Every server runs with --threads 1 on this machine, on free loopback ports;
the script stops exactly the processes it started (by PID). Figures are
medians over R runs. Nothing here asserts a figure: the report is the
output.
"""

import argparse
import collections
import os
import re
import subprocess
import tempfile
import time

import benchlib
from benchlib import DEFAULT_HERD, ROOT, fmt, free_ports, median



def say(*args):
    benchlib.say("bench-routing", *args)


def bench(bench_bin, args):
    return benchlib.bench(bench_bin, args, "bench-routing")


def propagate(bench_bin, herd, origin, targets, samples):
    args = ["propagate", "--from", herd.addr(origin), "--samples", str(samples)]
    for t in targets:
        args += ["--to", herd.addr(t)]
    result = bench(bench_bin, args)
    # The worst target's percentiles: how long until every server held it
    # is bounded below by these.
    p50 = max(t["latency_us"]["p50"] for t in result["targets"])
    p99 = max(t["latency_us"]["p99"] for t in result["targets"])
    timeouts = sum(t["timeouts"] for t in result["targets"])
    return p50, p99, timeouts


def farthest(servers, origin):
    adjacent = collections.defaultdict(set)
    for name, theirs in servers:
        for t in theirs:
            adjacent[name].add(t)
            adjacent[t].add(name)
    distance = {origin: 0}
    queue = collections.deque([origin])
    while queue:
        at = queue.popleft()
        for t in sorted(adjacent[at]):
            if t not in distance:
                distance[t] = distance[at] + 1
                queue.append(t)
    far = max(distance.values())
    return sorted(n for n, d in distance.items() if d == far)[0], far


def generated(herd_bin, n, topology):
    text = subprocess.run([herd_bin, "config", "--servers", str(n), "--topology", topology],
                          capture_output=True, text=True, check=True).stdout
    servers = []
    for block in text.split("[[servers]]")[1:]:
        name = re.search(r'name = "([^"]+)"', block).group(1)
        theirs = re.findall(r'"([^"]+)"', re.search(r"neighbours = \[([^\]]*)\]", block).group(1))
        servers.append((name, theirs))
    return servers


def stopped_counts(herd):
    counts = collections.Counter()
    for name in herd.names:
        for line in herd.log(name).splitlines():
            if " stopped" in line and "updates_sent=" in line:
                for key, value in re.findall(r"(\w+)=(\d+)", line):
                    counts[key] += int(value)
    return counts


def payloads(herd):
    sent = sum(len(re.findall(r" sent to [A-Za-z0-9]+: AT ", herd.log(n))) for n in herd.names)
    return sent


def default_herd_rows(herd_bin, bench_bin, args, workdir):
    rows = []
    names = [n for n, _ in DEFAULT_HERD]
    cases = [None] + names
    results = collections.defaultdict(list)
    for _ in range(args.runs):
        herd = benchlib.Herd(herd_bin, DEFAULT_HERD, workdir)
        herd.start_all()
        try:
            for dead in cases:
                if dead:
                    herd.kill(dead)
                    time.sleep(1)  # the survivors notice, the herd settles
                origin = "Jaquez" if dead == "Hill" else "Hill"
                targets = [n for n in names if n not in (origin, dead)]
                results[dead].append(propagate(bench_bin, herd, origin, targets, args.samples))
                if dead:
                    herd.start(dead)
                    time.sleep(1)
        finally:
            herd.stop_all()
    for dead in cases:
        p50 = median([r[0] for r in results[dead]])
        p99 = median([r[1] for r in results[dead]])
        timeouts = sum(r[2] for r in results[dead])
        rows.append((f"healthy" if dead is None else f"{dead} killed", p50, p99, timeouts))
    return rows


def size_rows(herd_bin, bench_bin, args, workdir):
    rows = []
    for n in args.sizes:
        servers = generated(args.new_bin, n, args.topology)
        far, hops = farthest(servers, "S" + "1".rjust(max(2, len(str(n))), "0"))
        first = servers[0][0]
        per = collections.defaultdict(list)
        for _ in range(args.runs):
            # Steady state: an open-loop load well below what the herd takes,
            # and the propagation samples; counted from the logs and the
            # counters each server logs when it stops.
            herd = benchlib.Herd(herd_bin, servers, workdir)
            herd.start_all()
            try:
                bench(bench_bin, ["iamat", "--addr", herd.addr(first), "--conns", "4",
                                  "--rate", str(args.rate), "--clients", "1000",
                                  "--duration", str(args.duration), "--warmup", "0.5",
                                  "--flooded-to", herd.addr(far)])
                p50, p99, _ = propagate(bench_bin, herd, first, [far], args.samples)
            finally:
                herd.stop_all()
            counts = stopped_counts(herd)
            stored = counts.get("iamat_stored") or None
            sent = payloads(herd)
            iamats = len(re.findall(r" sent: AT ", herd.log(first)))
            per["payloads"].append(sent / iamats / (n - 1) if iamats else None)
            # Watermark lines, or announcements in builds before them.
            marks = counts.get("watermark_bytes_sent", counts.get("announcement_bytes_sent"))
            per["announce"].append(marks / stored if stored and marks is not None else None)
            per["p50"].append(p50)
            per["p99"].append(p99)
            # Saturation, on a fresh herd: what the whole herd keeps up with.
            herd = benchlib.Herd(herd_bin, servers, workdir)
            herd.start_all()
            try:
                held = bench(bench_bin, ["iamat", "--addr", herd.addr(first), "--conns", "8",
                                         "--depth", "4", "--clients", "1000",
                                         "--duration", str(args.duration), "--warmup", "0.5",
                                         "--flooded-to", herd.addr(far)])
            finally:
                herd.stop_all()
            per["held"].append(held.get("flooded_throughput_rps"))
        rows.append((n, hops, median(per["payloads"]), median(per["announce"]),
                     median(per["p50"]), median(per["p99"]), median(per["held"])))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-bin", help="another herd binary to measure beside this tree's")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="5,10,20,50")
    parser.add_argument("--topology", default="random:3:1")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--out")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bin", "herd",
                        "--bin", "herd-bench"], cwd=ROOT, check=True)
    args.new_bin = os.path.join(ROOT, "target/release/herd")
    bench_bin = os.path.join(ROOT, "target/release/herd-bench")
    contenders = [("this tree", args.new_bin)]
    if args.old_bin:
        contenders.append(("--old-bin", os.path.abspath(args.old_bin)))
    report = [f"# bench-routing ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{args.runs} runs, medians)", ""]
    with tempfile.TemporaryDirectory() as workdir:
        report += ["## Default herd: propagation to every other server (µs; worst target)", "",
                   "| case | " + " | ".join(f"{c} p50 | {c} p99" for c, _ in contenders) + " |",
                   "|---|" + "---|---|" * len(contenders)]
        tables = [default_herd_rows(b, bench_bin, args, workdir) for _, b in contenders]
        for i, row in enumerate(tables[0]):
            cells = []
            for table in tables:
                _, p50, p99, timeouts = table[i]
                cells += [fmt(p50), fmt(p99) + (f" ({timeouts} timeouts)" if timeouts else "")]
            report.append(f"| {row[0]} | " + " | ".join(cells) + " |")
        report += ["", f"## Generated herds ({args.topology}): per update, from S01", "",
                   "| servers | hops to farthest | contender | payloads per update / (N−1) | "
                   "watermark bytes per update | propagation p50 µs | p99 µs | "
                   "IAMAT/s held by all |", "|---|---|---|---|---|---|---|---|"]
        for name, binary in contenders:
            for n, hops, pay, ann, p50, p99, held in size_rows(binary, bench_bin, args, workdir):
                report.append(f"| {n} | {hops} | {name} | {fmt(pay, 2)} | {fmt(ann, 1)} | "
                              f"{fmt(p50)} | {fmt(p99)} | {fmt(held)} |")
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
