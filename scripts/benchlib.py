"""What the benchmark scripts share: the default herd, free ports, the load
tool's JSON, and how figures are summed up and printed."""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SPEC's five servers and their links (each listed once).
DEFAULT_HERD = [
    ("Hill", ["Jaquez", "Smith"]),
    ("Jaquez", ["Singleton"]),
    ("Smith", ["Singleton", "Campbell"]),
    ("Campbell", ["Singleton"]),
    ("Singleton", []),
]
# The herd secret of every herd a script starts.
SECRET = os.urandom(16).hex()


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


class Herd:
    """A herd of `herd serve` processes started by a script, each on
    --threads 1 and free loopback ports; `extra` is more of the config
    (a [history] table, say)."""

    def __init__(self, herd_bin, servers, workdir, extra=""):
        # servers: [(name, [neighbour names])]
        self.bin = herd_bin
        self.dir = tempfile.mkdtemp(dir=workdir)
        ports = free_ports(2 * len(servers))
        self.client = {}
        lines = ['log_dir = "logs"', "", "[places]", 'provider = "geonames"', "", extra]
        for i, (name, theirs) in enumerate(servers):
            self.client[name] = ports[i]
            lines += [
                "",
                "[[servers]]",
                f'name = "{name}"',
                f'client = "127.0.0.1:{ports[i]}"',
                f'peer = "127.0.0.1:{ports[len(servers) + i]}"',
                "neighbours = [" + ", ".join(f'"{t}"' for t in theirs) + "]",
            ]
        self.config = os.path.join(self.dir, "herd.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.names = [name for name, _ in servers]
        self.links = len({frozenset((a, b)) for a, theirs in servers for b in theirs})
        self.procs = {}

    def start(self, name):
        out = open(os.path.join(self.dir, f"{name}.out"), "w")
        env = dict(os.environ, HERD_SECRET=SECRET)
        self.procs[name] = subprocess.Popen(
            [self.bin, "serve", name, "--config", self.config, "--threads", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        self.wait_ready(name)

    def start_all(self):
        for name in self.names:
            self.start(name)
        self.wait_settled()

    def wait_settled(self, timeout=60):
        """Waits until every server routes over every link of the herd (it
        logs so each time it works its routes out), so that what is
        measured next is the steady state, not the flooding of servers
        that do not know the graph yet. A build that logs no routes gets
        2 s."""
        want = f"routes worked out again: {self.links} links of the herd up"
        start = time.time()
        while time.time() < start + timeout:
            logs = [self.log(name) for name in self.names]
            if all(want in log for log in logs):
                return
            if time.time() > start + 2 and not any("routes worked out" in log for log in logs):
                return
            time.sleep(0.05)
        say("benchlib", f"the herd did not settle in {timeout} s; measuring anyway")

    def wait_ready(self, name):
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited at start: {self.out(name)}")
            try:
                socket.create_connection(("127.0.0.1", self.client[name]), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{name} not listening after 20 s")

    def kill(self, name):
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self):
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}

    def addr(self, name):
        return f"127.0.0.1:{self.client[name]}"

    def out(self, name):
        with open(os.path.join(self.dir, f"{name}.out"), errors="replace") as f:
            return f.read()[-400:]

    def log(self, name):
        path = os.path.join(self.dir, "logs", f"{name}.log")
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""
