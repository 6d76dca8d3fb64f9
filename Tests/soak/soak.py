#!/usr/bin/env python3
"""Soak test: mixed traffic through every check for a bounded time while faults are
injected, asserting that every request is answered (no retries: a request without an
answer is counted), every answer is the right one, RSS stays flat after warm-up and no
file descriptor leaks.

Faults injected in turn: an in-place edit of the recipient table (after which the new
canary recipient must be accepted and the previous one refused), a SIGHUP config reload,
a SIGHUP storm, SIGKILL of an SPF worker process, and PostgreSQL (the rate-limit store)
stopped and started again (while it is down, the limited traffic must get the store's
fail action).

Part of the traffic is rate-limited for real: SASL users get LIMIT recipients an hour, so
each user's answers must be exactly LIMIT admissions, then refusals; a user who met the
store outage must never get more than LIMIT. SPF temperrors are counted, and each must
follow an SPF worker kill by at most 3 s.

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
LIMIT = 20  # recipients per hour for each SASL user of the limited traffic
OVER = "DEFER 4.7.1"
STORE_DOWN = "DEFER 4.3.0 Rate-limit store unavailable"
TEMPERROR = "DEFER_IF_PERMIT 4.7.24"


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
    """One Postfix-like connection: one request at a time. A failed request is not retried:
    it raises, and the next request opens a new connection."""

    def __init__(self, port):
        self.port = port
        self.sock = None

    def ask(self, attrs):
        data = "".join(f"{k}={v}\n" for k, v in attrs.items()) + "\n"
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
fail_action = "{STORE_DOWN}"
[ratelimit.postgres]
host = "127.0.0.1"
port = {pg.port}
user = "postgres"
database = "postgres"
connect_timeout = "1s"
statement_timeout = "500ms"
[[ratelimit.rule]]
name = "per_user"
key = "sasl_username"
count = "recipient"
limit = "{LIMIT}/1h"
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
        stats = {"requests": 0, "wrong": 0, "unanswered": 0, "temperror": 0, "temperror_unexplained": 0,
                 "limited": 0, "limited_admitted": 0, "limited_refused": 0, "store_down": 0,
                 "canary_checks": 0, "canary_wrong": 0, "examples": []}
        lock = threading.Lock()
        kill_times = []
        # Per SASL user of the limited traffic: its answers in order ("admitted", "over", "down").
        users = {}

        def note(what, example=None):
            with lock:
                stats[what] += 1
                if example and len(stats["examples"]) < 12:
                    stats["examples"].append(example)

        def traffic(index):
            rng = random.Random(index)
            client = Client(port)
            seq = 0
            user_number = 0
            user_requests = 0
            while not stop.is_set():
                seq += 1
                instance = f"{index}.{seq}"
                kind = rng.randrange(6)
                client_ip = f"198.51.100.{rng.randrange(1, 250)}"
                attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": client_ip,
                         "client_name": "mx.soak", "helo_name": "mx.soak", "instance": instance, "queue_id": "",
                         "recipient_count": "0", "size": "0", "sasl_username": ""}
                user = None
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
                elif kind == 4:
                    attrs.update(protocol_state="DATA", sender="", recipient="", recipient_count="2")
                    expect = ("550 5.7.1",)
                else:
                    # Rate-limited traffic: a SASL user (SPF skips authenticated clients) sends
                    # LIMIT + 5 recipients, then the next user takes over.
                    if user_requests == LIMIT + 5:
                        user_number += 1
                        user_requests = 0
                    user_requests += 1
                    user = f"t{index}u{user_number}"
                    attrs.update(sender="a@pass.soak", recipient=rng.choice(KNOWN), sasl_username=user)
                    expect = ("DUNNO", OVER, STORE_DOWN)
                try:
                    answer = client.ask(attrs)
                except Exception as error:
                    note("unanswered", f"unanswered: {attrs['sender']} -> {attrs['recipient']}: {error}")
                    continue
                action = answer.removeprefix("action=")
                ok = any(action.startswith(e) for e in expect)
                with lock:
                    stats["requests"] += 1
                if user is not None and ok:
                    outcome = "admitted" if action == "DUNNO" else ("over" if action.startswith(OVER) else "down")
                    with lock:
                        users.setdefault(user, []).append(outcome)
                        stats["limited"] += 1
                        stats[{"admitted": "limited_admitted", "over": "limited_refused", "down": "store_down"}[outcome]] += 1
                elif action.startswith(TEMPERROR) and user is None and kind in (0, 2, 3):
                    # A request in flight when its SPF worker is killed gets SPF temperror.
                    now = time.time()
                    with lock:
                        explained = any(0 <= now - t <= 3.0 for t in kill_times)
                    note("temperror")
                    if not explained:
                        note("temperror_unexplained", f"temperror with no worker kill in the 3 s before: {attrs['sender']}")
                elif not ok:
                    note("wrong", f"{attrs['sender']} -> {attrs['recipient']} ({attrs['sasl_username']}): {action}")

        def spf_workers():
            out = subprocess.run(["pgrep", "-P", str(backstop.pid)], capture_output=True, text=True).stdout
            return [int(p) for p in out.split()]

        faults = {"table_edit": 0, "reload": 0, "hup_storm": 0, "spf_worker_kill": 0, "postgres_bounce": 0}

        def canary_answer(probe, name):
            attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "198.51.100.7",
                     "sender": "a@pass.soak", "recipient": f"{name}@soak.test", "instance": f"canary.{name}.{time.time()}"}
            try:
                return probe.ask(attrs).removeprefix("action=")
            except Exception as error:
                return f"unanswered: {error}"

        def check_canaries(probe, new, old):
            """The new canary must be accepted and the old one refused within 5 s of the edit."""
            end = time.time() + 5
            while time.time() < end:
                accepted = canary_answer(probe, new).startswith("PREPEND Received-SPF: pass")
                refused = canary_answer(probe, old).startswith("550 5.1.1")
                if accepted and refused:
                    note("canary_checks")
                    return
                time.sleep(0.1)
            note("canary_checks")
            note("canary_wrong", f"canary {new} not accepted or {old} not refused 5 s after the table edit: "
                                 f"{canary_answer(probe, new)} / {canary_answer(probe, old)}")

        def chaos():
            step = 0
            canary = "canary0"
            probe = Client(port)
            while not stop.wait(2.0):
                step += 1
                kind = step % 5
                if kind == 0:
                    new = f"canary{step}"
                    table.write_text("".join(f"{a} OK\n" for a in KNOWN) + f"{new}@soak.test OK\n")
                    faults["table_edit"] += 1
                    check_canaries(probe, new, canary)
                    canary = new
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
                        with lock:
                            kill_times.append(time.time())
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
        exact = [u for u, seen in users.items() if "down" not in seen and len(seen) >= LIMIT]
        inexact = [u for u, seen in users.items() if "down" in seen]
        not_exact = [u for u in exact if users[u] != ["admitted"] * LIMIT + ["over"] * (len(users[u]) - LIMIT)]
        too_many = [u for u in users if users[u].count("admitted") > LIMIT]
        print(f"soak: {args.seconds:.0f}s, {stats['requests']} requests answered, {stats['unanswered']} unanswered, "
              f"{stats['wrong']} wrong; SPF temperror {stats['temperror']} ({stats['temperror_unexplained']} not after a "
              f"worker kill); rate-limited {stats['limited']} (admitted {stats['limited_admitted']}, refused "
              f"{stats['limited_refused']}, store down {stats['store_down']}; {len(exact)} users checked exactly, "
              f"{len(inexact)} met the outage); canaries checked {stats['canary_checks']}, wrong {stats['canary_wrong']}; "
              f"faults injected {injected} {faults}; RSS after warm-up {rss_start // 1024} MiB -> {samples[-1] // 1024} MiB "
              f"(max {max(samples) // 1024} MiB, growth {growth} KiB); fds {fd_start} -> {fd_end}", flush=True)
        for example in stats["examples"]:
            print("  " + example)
        check(stats["requests"] > 1000, "traffic flowed (more than 1000 requests answered)")
        check(stats["unanswered"] == 0, "every request was answered")
        check(stats["wrong"] == 0, "no wrong answer")
        check(stats["temperror_unexplained"] == 0, "SPF temperror only within 3 s after a worker kill")
        check(stats["temperror"] <= args.connections * max(1, faults["spf_worker_kill"]),
              "SPF temperror at most one per connection per worker kill")
        check(len(exact) >= 10 and not not_exact, f"rate limit exact: {LIMIT} admitted then refused, for every user "
              f"that did not meet the outage ({len(exact)} users; wrong: {not_exact[:3]})")
        check(not too_many, f"no user ever admitted more than {LIMIT} ({too_many[:3]})")
        check(faults["postgres_bounce"] == 0 or stats["store_down"] > 0,
              "the store's fail action was answered while PostgreSQL was stopped")
        check(faults["table_edit"] == 0 or (stats["canary_checks"] == faults["table_edit"] and stats["canary_wrong"] == 0),
              "after every table edit the new canary is accepted and the old one refused")
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
