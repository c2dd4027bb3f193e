"""benches/chaos/procs.py: process bookkeeping. Every process the soak starts is kept by
pid (and appended to DIR/pids for run.sh's backstop), signalled and stopped by pid, and
read from /proc (state, parent, command line, VmRSS). Also the free ports."""
import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import time

from common import BrokenRun


def proc_state(pid):
    """'R', 'S', 'T', 'Z'... or None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            line = f.read()
    except OSError:
        return None
    return line.rsplit(")", 1)[1].split()[0]


def proc_ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            line = f.read()
    except OSError:
        return None
    return int(line.rsplit(")", 1)[1].split()[1])


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def alive(pid):
    st = proc_state(pid)
    if st == "Z":
        reap(pid)
        return False
    return st is not None


def reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None



class Procs:
    """Every process we start, by pid. Also the successors tether starts itself on
    SIGUSR2, which become our children (we are a child subreaper) once their parent exits."""

    def __init__(self, d):
        self.dir = d
        self.pidfile = os.path.join(d, "pids")
        self.pids = {}  # pid -> name
        try:  # PR_SET_CHILD_SUBREAPER: orphaned descendants are re-parented to us
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
        except Exception:
            pass

    def start(self, name, argv, log, env=None):
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=self.dir)
        self.adopt(p.pid, name)
        return p.pid

    def adopt(self, pid, name):
        self.pids[pid] = name
        with open(self.pidfile, "a") as f:
            f.write(f"{pid} {name}\n")

    def signal(self, pid, sig):
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    async def wait_exit(self, pid, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                reap(pid)
                return True
            await asyncio.sleep(0.05)
        return False

    def stop_all_sync(self, grace=6.0):
        live = [p for p in self.pids if alive(p)]
        for p in live:
            try:
                os.kill(p, signal.SIGCONT)
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in live):
            time.sleep(0.05)
        for p in live:
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)
        for p in live:
            reap(p)


def free_ports(n, rng):
    lo = 10000
    hi = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - 1
    if hi < lo + 1000:
        hi = 29999
    out = set()
    for _ in range(5000):
        if len(out) == n:
            return sorted(out, key=lambda _: rng.random())
        p = rng.randint(lo, hi)
        if p in out:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        out.add(p)
    raise BrokenRun("no free ports")
