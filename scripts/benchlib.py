"""What the benchmark scripts share: the default herd, free ports, the load
tool's JSON, and how figures are summed up and printed."""

import json
import os
import socket
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SPEC's five servers and their links (each listed once).
DEFAULT_HERD = [
    ("Hill", ["Jaquez", "Smith"]),
    ("Jaquez", ["Singleton"]),
    ("Smith", ["Singleton", "Campbell"]),
    ("Campbell", ["Singleton"]),
    ("Singleton", []),
]


def say(script, *args):
    print(f"{script}:", *args, file=sys.stderr, flush=True)


def free_ports(n):
    """N distinct free loopback ports, held together while chosen."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def bench(bench_bin, args, script="bench"):
    """Runs herd-bench with --json and returns its figures; figures from a
    run that found problems are kept, with a note."""
    out = subprocess.run([bench_bin, *args, "--json"], capture_output=True, text=True)
    if not out.stdout.strip():
        raise RuntimeError(f"herd-bench {' '.join(args)}: {out.stderr.strip()[-300:]}")
    result = json.loads(out.stdout)
    if out.returncode != 0:
        say(script, f"herd-bench {args[0]} found problems (exit {out.returncode}); figures kept")
    return result


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"
