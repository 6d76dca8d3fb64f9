#!/usr/bin/env python3
"""Soak test: mixed traffic through every check for a bounded time while faults are
injected, asserting that every request is answered, every answer is the right one, RSS
stays flat after warm-up and no file descriptor leaks.

Faults injected in turn: an in-place edit of the recipient table, a SIGHUP config reload,
a SIGHUP storm, SIGKILL of an SPF worker process (when SPF runs in worker processes),
and PostgreSQL (the rate-limit store) stopped and started again.

Everything runs on loopback and stops by itself. Usage (as root, from the repo root):
    SOAK_SECONDS=90 python3 Tests/soak/soak.py [--binary .build/debug/backstop]
Prints one summary line and "N passed, N failed" for its assertions; exits 1 on failure.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DNS_SERVER = REPO / "Tests" / "Support" / "dns_server.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

KNOWN = [f"user{i}@soak.test" for i in range(200)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, seconds=20.0, step=0.05):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


class Postgres:
    """A private cluster in a temp dir, run as the postgres user (it refuses root)."""

    def __init__(self, root: Path):
        self.dir = root / "pg"
        self.port = free_port()
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        self.run(["initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"], quiet=True)

    def run(self, args, quiet=False):
        cmd = ["runuser", "-u", "postgres", "--", str(PG_BIN / args[0])] + args[1:]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None,
                       stderr=subprocess.DEVNULL if quiet else None)

    def start(self):
        self.run(["pg_ctl", "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"), "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start"], quiet=True)

    def stop(self):
        self.run(["pg_ctl", "-D", str(self.dir / "data"), "-w", "-m", "fast", "stop"], quiet=True)


class Client:
    """One Postfix-like connection: one request at a time, reconnects if closed."""

    def __init__(self, port):
        self.port = port
        self.sock = None

    def ask(self, attrs):
        data = "".join(f"{k}={v}\n" for k, v in attrs.items()) + "\n"
        for attempt in range(2):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
                self.sock.sendall(data.encode())
                buf = b""
                while not buf.endswith(b"\n\n"):
                    chunk = self.sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed without an answer")
                    buf += chunk
                return buf.decode().strip()
            except (OSError, ConnectionError):
                if self.sock:
                    self.sock.close()
                self.sock = None
                if attempt == 1:
                    raise


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=str(REPO / ".build" / "debug" / "backstop"))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "90")))
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="backstop-soak-"))
    os.chmod(root, 0o755)
    procs = []
    results = {"passed": 0, "failed": 0}

    def check(ok, what):
        results["passed" if ok else "failed"] += 1
        print(("ok   " if ok else "FAIL ") + what, flush=True)

    pg = Postgres(root)
    pg.start()
    try:
        zone = {"pass.soak": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}],
                "fail.soak": [{"TXT": "v=spf1 -all"}]}
        (root / "zone.json").write_text(json.dumps(zone))
        dns = subprocess.Popen([sys.executable, str(DNS_SERVER), "--zone", str(root / "zone.json"), "--port", "0"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(dns)
        dns_port = int(dns.stdout.readline().strip())

        table = root / "recipients"
        table.write_text("".join(f"{a} OK\n" for a in KNOWN) + "canary0@soak.test OK\n")
        port = free_port()
        config = root / "backstop.toml"
        config_text = f"""
[[listen]]
address = "127.0.0.1:{port}"
[log]
level = "notice"
[policy]
deadline = "5s"
rcpt = ["recipients", "spf", "ratelimit"]
data = ["bounces"]
[recipients]
tables = ["recipients"]
reload_interval = "200ms"
[spf]
resolvers = ["127.0.0.1:{dns_port}"]
trusted_networks = []
dns_timeout = "1s"
evaluation_deadline = "3s"
[ratelimit]
store = "postgres"
fail_action = "DUNNO"
[ratelimit.postgres]
host = "127.0.0.1"
port = {pg.port}
user = "postgres"
database = "postgres"
connect_timeout = "1s"
statement_timeout = "500ms"
[[ratelimit.rule]]
name = "per_client"
key = "client_address"
count = "recipient"
limit = "100000000/1h"
[bounces]
"""
        config.write_text(config_text)
        log = open(root / "backstop.log", "w")
        backstop = subprocess.Popen([args.binary, "serve", "--config", str(config)], stdout=log, stderr=log)
        procs.append(backstop)
        if not wait_until(lambda: "backstop started" in (root / "backstop.log").read_text(), 30):
            print((root / "backstop.log").read_text())
            raise SystemExit("backstop did not start")

        stop = threading.Event()
        stats = {"requests": 0, "wrong": 0, "unanswered": 0, "temperror": 0, "faults": 0, "examples": []}
        lock = threading.Lock()

        def traffic(index):
            rng = random.Random(index)
            client = Client(port)
            seq = 0
            while not stop.is_set():
                seq += 1
                instance = f"{index}.{seq}"
                kind = rng.randrange(5)
                client_ip = f"198.51.100.{rng.randrange(1, 250)}"
                attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": client_ip,
                         "client_name": "mx.soak", "helo_name": "mx.soak", "instance": instance, "queue_id": "",
                         "recipient_count": "0", "size": "0", "sasl_username": ""}
                if kind == 0:
                    attrs.update(sender="a@pass.soak", recipient=rng.choice(KNOWN))
                    expect = ("PREPEND Received-SPF: pass",)
                elif kind == 1:
                    attrs.update(sender="a@pass.soak", recipient=f"nobody{rng.randrange(1000)}@soak.test")
                    expect = ("550 5.1.1",)
                elif kind == 2:
                    attrs.update(sender="a@fail.soak", recipient=rng.choice(KNOWN))
                    expect = ("550 5.7.23",)
                elif kind == 3:
                    attrs.update(sender="a@pass.soak", recipient="someone@elsewhere.example")
                    expect = ("PREPEND Received-SPF: pass",)
                else:
                    attrs.update(protocol_state="DATA", sender="", recipient="", recipient_count="2")
                    expect = ("550 5.7.1",)
                try:
                    answer = client.ask(attrs)
                except Exception as error:
                    with lock:
                        stats["unanswered"] += 1
                        stats["examples"].append(f"unanswered: {error}")
                    continue
                action = answer.removeprefix("action=")
                ok = any(action.startswith(e) for e in expect)
                # A request in flight when its SPF worker is killed gets SPF temperror.
                temperror = action.startswith("DEFER_IF_PERMIT 4.7.24")
                with lock:
                    stats["requests"] += 1
                    if temperror:
                        stats["temperror"] += 1
                    elif not ok:
                        stats["wrong"] += 1
                        if len(stats["examples"]) < 5:
                            stats["examples"].append(f"{attrs['sender']} -> {attrs['recipient']}: {action}")

        def spf_workers():
            out = subprocess.run(["pgrep", "-P", str(backstop.pid)], capture_output=True, text=True).stdout
            return [int(p) for p in out.split()]

        faults = {"table_edit": 0, "reload": 0, "hup_storm": 0, "spf_worker_kill": 0, "postgres_bounce": 0}

        def chaos():
            step = 0
            while not stop.wait(2.0):
                step += 1
                kind = step % 5
                if kind == 0:
                    table.write_text("".join(f"{a} OK\n" for a in KNOWN) + f"canary{step}@soak.test OK\n")
                    faults["table_edit"] += 1
                elif kind == 1:
                    backstop.send_signal(signal.SIGHUP)
                    faults["reload"] += 1
                elif kind == 2:
                    for _ in range(20):
                        backstop.send_signal(signal.SIGHUP)
                    faults["hup_storm"] += 1
                elif kind == 3:
                    workers = spf_workers()
                    if workers:
                        os.kill(random.choice(workers), signal.SIGKILL)
                        faults["spf_worker_kill"] += 1
                else:
                    pg.stop()
                    stop.wait(2.0)
                    pg.start()
                    faults["postgres_bounce"] += 1

        threads = [threading.Thread(target=traffic, args=(i,), daemon=True) for i in range(args.connections)]
        for t in threads:
            t.start()
        warmup = max(5.0, args.seconds * 0.2)
        time.sleep(warmup)
        rss_start = rss_kib(backstop.pid)
        fd_start = fd_count(backstop.pid)
        samples = [rss_start]
        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        end = time.time() + args.seconds - warmup
        while time.time() < end:
            time.sleep(1)
            samples.append(rss_kib(backstop.pid))
        stop.set()
        for t in threads:
            t.join(30)
        chaos_thread.join(30)
        time.sleep(1)
        samples.append(rss_kib(backstop.pid))
        fd_end = fd_count(backstop.pid)
        growth = samples[-1] - rss_start
        injected = sum(faults.values())
        print(f"soak: {args.seconds:.0f}s, {stats['requests']} requests answered, {stats['unanswered']} unanswered, "
              f"{stats['wrong']} wrong, {stats['temperror']} SPF temperror during worker kills; faults injected "
              f"{injected} {faults}; RSS after warm-up {rss_start // 1024} MiB -> {samples[-1] // 1024} MiB "
              f"(max {max(samples) // 1024} MiB, growth {growth} KiB); fds {fd_start} -> {fd_end}", flush=True)
        for example in stats["examples"]:
            print("  " + example)
        check(stats["requests"] > 1000, "traffic flowed (more than 1000 requests answered)")
        check(stats["unanswered"] == 0, "every request was answered")
        check(stats["wrong"] == 0, "no wrong answer")
        check(stats["temperror"] <= 4 * max(1, faults["spf_worker_kill"]) * 2,
              "SPF temperror only around worker kills")
        check(injected >= 5, "faults were injected")
        check(growth < 32 * 1024, "RSS flat after warm-up (growth under 32 MiB)")
        check(fd_end <= fd_start + 16, "no file-descriptor growth")
        check(backstop.poll() is None, "backstop still running")
        backstop.send_signal(signal.SIGTERM)
        check(backstop.wait(20) == 0, "graceful stop")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        try:
            pg.stop()
        except Exception:
            pass
        if results["failed"] == 0:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root} for inspection")
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
