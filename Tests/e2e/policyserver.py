# Backstop as the end-to-end tests run it: the built binary, a generated backstop.toml and
# the loopback DNS server the SPF check resolves against. Which checks the binary knows is
# asked from the binary itself (`backstop check-config`), so scenarios of checks that have
# not landed yet are skipped with that reason instead of failing the harness.
# The check sections live in CHECK_SETUPS below: the one place to adjust when a check's
# configuration keys change.

from __future__ import annotations

import datetime
import json
import os
import pwd
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mailsystem import can_connect, wait_until

REPO = Path(__file__).resolve().parents[2]
DNS_SERVER = REPO / "Tests" / "Support" / "dns_server.py"


def backstop_binary() -> Path:
    return Path(os.environ.get("BACKSTOP_BIN") or REPO / ".build" / "debug" / "backstop")


# ---------------------------------------------------------------------------------------
# what the scenarios need from each check


@dataclass
class Environment:
    """What a check section may refer to."""
    root: Path                  # directory of backstop.toml (relative paths resolve here)
    dns_address: str | None     # "127.0.0.1:PORT" of the loopback DNS server, if running
    rate_limit: int             # requests per client address the ratelimit rule allows
    test_mode: bool = False     # [spf] and [ratelimit] test_mode (a scenario reloads with it)
    batv_verify_since: str | None = None   # [batv] verify_since; None: untagged bounces refused


@dataclass
class CheckSetup:
    name: str
    stages: list[str]                           # [policy] keys: rcpt, data, end_of_message
    section: Callable[[Environment], str]       # its TOML section(s)
    prepare: Callable[[Environment], None] | None = None   # writes files the section names


# Recipients known to the recipient table at start; tests add more at run time.
KNOWN_RECIPIENTS = ["alice@example.test", "bob@example.test", "postmaster@example.test",
                    "walter@example.test", "victor@example.test"]
# The one client the per-recipient rule applies to (a pass for pass.spf.test).
ONCE_PER_RECIPIENT_CLIENT = "198.51.100.250"
RECIPIENT_TABLE = "recipients.txt"


def _recipients(env: Environment) -> str:
    return f"""[recipients]
tables = ["{RECIPIENT_TABLE}"]
domains = ["example.test"]
reload_interval = "200ms"     # the table-edit scenario waits for it
"""


def _spf(env: Environment) -> str:
    return f"""[spf]
resolvers = ["{env.dns_address}"]
trusted_networks = []         # the test clients are on loopback, trusted by default
receiver = "mx.backstop.test"
worker_user = "daemon"        # the server runs as nobody; workers need a user of their own
test_mode = {"true" if env.test_mode else "false"}
dns_timeout = "1s"
evaluation_deadline = "4s"    # inside [policy] deadline (5s)
"""


def _ratelimit(env: Environment) -> str:
    return f"""[ratelimit]
test_mode = {"true" if env.test_mode else "false"}
[[ratelimit.rule]]
name = "per-client"
key = "client_address"
count = "recipient"
limit = "{env.rate_limit}/1h"
[[ratelimit.rule]]
# Refuses a recipient after SPF added its header (the header-once scenarios).
name = "once-per-recipient"
key = "recipient"
count = "recipient"
limit = "1/1h"
only_networks = ["{ONCE_PER_RECIPIENT_CLIENT}/32"]
"""


def _bounces(env: Environment) -> str:
    return "[bounces]\n"


# BATV: example.test signs. Keys as `K SECRET` lines, the last one signs; the newest secret
# has a space inside and the older line trailing blanks, both part of the format (the
# secret is the rest of the line, trimmed).
BATV_KEY_FILE = "batv-keys"
BATV_KEYS = [("1", "older key, still verifying 4f1c"), ("2", "newest key signs 9d2e 7b")]
BATV_LIFETIME_DAYS = 7
BATV_EXCLUDED_SENDER = "list-bounces@example.test"   # as mailing-list software would use


def batv_rollout_date() -> str:
    """A verify_since 30 days ahead. The session runs in BATV's roll-out phase because
    scenarios older than BATV send untagged bounces to alice@ and bob@example.test and
    expect them accepted; the BATV scenarios that need untagged bounces refused reload
    Backstop without verify_since for their duration."""
    return (datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=30)).isoformat()


def _batv(env: Environment) -> str:
    since = f'verify_since = "{env.batv_verify_since}"\n' if env.batv_verify_since else ""
    return f"""[batv]
key_file = "{BATV_KEY_FILE}"
domains = ["example.test"]
lifetime = "{BATV_LIFETIME_DAYS}d"
{since}exempt = ["postmaster", "abuse"]
exclude_senders = ["{BATV_EXCLUDED_SENDER}"]
test_mode = false
"""


def write_batv_keys(env: Environment, keys: list[tuple[str, str]] = BATV_KEYS):
    """The key file, as Backstop requires it: readable by its own user only. Backstop reads
    it again at SIGHUP after dropping to nobody, so nobody owns it. Replaced atomically."""
    path = env.root / BATV_KEY_FILE
    lines = ["# BATV keys of the end-to-end tests (generated). The last key line signs."]
    for i, (number, secret) in enumerate(keys):
        lines += ["", f"{number} {secret}   "] if i == 0 else [f"{number} {secret}"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(tmp, nobody.pw_uid, nobody.pw_gid)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# Order matters within a stage: the first check with an opinion decides. bounces only at
# DATA: Postfix evaluates smtpd_data_restrictions for BDAT clients too (a scenario shows it).
# batv right after recipients: a forged bounce costs no SPF lookup.
CHECK_SETUPS = [
    CheckSetup("recipients", ["rcpt"], _recipients),
    CheckSetup("batv", ["rcpt"], _batv, write_batv_keys),
    CheckSetup("spf", ["rcpt"], _spf),
    CheckSetup("ratelimit", ["rcpt"], _ratelimit),
    CheckSetup("bounces", ["data"], _bounces),
]


def write_recipient_table(path: Path, addresses: list[str]):
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# recipients of the end-to-end tests (generated)\n" + "".join(f"{a}  OK\n" for a in addresses))
    os.replace(tmp, path)  # atomic, as an admin's editor or deploy script should


# ---------------------------------------------------------------------------------------
# the binary


def probe_checks(binary: Path, workdir: Path) -> dict[str, str | None]:
    """check name -> None when the binary knows it, else the reason it is unavailable."""
    result: dict[str, str | None] = {}
    for setup in CHECK_SETUPS:
        probe = workdir / f"probe-{setup.name}.toml"
        probe.write_text(f'[policy]\n{setup.stages[0]} = ["{setup.name}"]\n')
        p = subprocess.run([str(binary), "check-config", str(probe)], capture_output=True, text=True, timeout=60)
        output = (p.stdout + p.stderr).strip()
        if f'unknown check "{setup.name}"' in output:
            result[setup.name] = (f'check "{setup.name}" is not in this backstop build yet '
                                  f'(backstop check-config: unknown check "{setup.name}")')
        else:
            # Known (its section may still be incomplete in the probe; the real config is
            # validated as a whole later and must pass).
            result[setup.name] = None
    return result


class Backstop:
    """One `backstop serve` process with a generated configuration."""

    def __init__(self, binary: Path, root: Path, listeners: list[str], unix_owner: str | None,
                 enabled: list[CheckSetup], env: Environment, socketmaps: list[str] | None = None):
        self.binary = binary
        self.root = root
        self.config_path = root / "backstop.toml"
        self.log_path = root / "backstop.log"
        self.listeners = listeners
        self.socketmaps = socketmaps or []   # "host:port" of socketmap listeners (BATV)
        self.unix_owner = unix_owner
        self.enabled = enabled
        self.env = env
        self.process: subprocess.Popen | None = None
        self._log = None

    def config_text(self) -> str:
        out = ["# Backstop configuration of the end-to-end tests (generated by Tests/e2e)."]
        for address in self.listeners:
            out.append("[[listen]]")
            out.append(f'address = "{address}"')
            if address.startswith("unix:"):
                out.append('mode = "0660"')
                if self.unix_owner:
                    out.append(f'owner = "{self.unix_owner}"')
                    out.append(f'group = "{self.unix_owner}"')
            else:
                out.append('allow = ["127.0.0.0/8"]')
        for address in self.socketmaps:
            out.append("[[listen]]")
            out.append(f'address = "{address}"')
            out.append('protocol = "socketmap"')
            out.append('allow = ["127.0.0.0/8"]')
        out.append("""
[server]
# Started as root (to create the socket in Postfix's private/ and give it to postfix),
# then running as an unprivileged user, as docs/postfix.md describes.
user = "nobody"
group = "nogroup"

[log]
level = "info"
destination = "stderr"

[policy]
# below Postfix's timeout=10s, so Backstop's own fail actions win over default_action
deadline = "5s\"""")
        for stage in ("rcpt", "data", "end_of_message"):
            names = [s.name for s in self.enabled if stage in s.stages]
            out.append(f"{stage} = {json.dumps(names)}")
        out.append("")
        for s in self.enabled:
            out.append(s.section(self.env))
        return "\n".join(out) + "\n"

    def write_config(self):
        self.config_path.write_text(self.config_text())

    def check_config(self):
        p = subprocess.run([str(self.binary), "check-config", str(self.config_path)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"backstop check-config {self.config_path} failed:\n{p.stdout}{p.stderr}\n"
                               f"--- config ---\n{self.config_text()}")

    def start(self, timeout: float = 15):
        if self._log is None:
            self._log = open(self.log_path, "ab")
        started_before = self.log_text().count("backstop started")
        every = self.listeners + self.socketmaps
        self.process = subprocess.Popen([str(self.binary), "serve", "--config", str(self.config_path)],
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        def ready():
            if self.process.poll() is not None:
                return True
            # "backstop started" comes after every listener is bound and the Unix socket
            # has its owner and mode; before that, smtpd could be refused by permissions.
            return (self.log_text().count("backstop started") > started_before
                    and all(can_connect(a) for a in every))
        wait_until(ready, timeout, what="backstop to listen on " + ", ".join(every))
        if self.process.poll() is not None:
            raise RuntimeError(f"backstop exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self):
        self.stop()
        if self._log:
            self._log.close()
            self._log = None

    def reload(self):
        assert self.process and self.process.poll() is None
        self.process.send_signal(signal.SIGHUP)

    def reconfigure(self, timeout: float = 15, **env):
        """Rewrites the configuration with `env` changed, reloads, waits until it is in force."""
        for key, value in env.items():
            setattr(self.env, key, value)
        before = self.log_text().count("configuration reloaded")
        self.write_config()
        self.check_config()
        self.reload()
        wait_until(lambda: self.log_text().count("configuration reloaded") > before, timeout, what="backstop to reload")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""


# ---------------------------------------------------------------------------------------
# the loopback DNS server of the SPF tests (Tests/Support/dns_server.py, from issue 5)

SPF_ZONE = {
    # clients in 198.51.100.0/24 (named with XCLIENT) may send for pass.spf.test, and the
    # HELO name the test client uses
    "pass.spf.test": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}],
    "client.pass.spf.test": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}, {"A": "198.51.100.1"}],
    # only 203.0.113.0/24 may send for fail.spf.test
    "fail.spf.test": [{"TXT": "v=spf1 ip4:203.0.113.0/24 -all"}],
}


class DnsServer:
    def __init__(self, root: Path):
        self.root = root
        self.process: subprocess.Popen | None = None
        self.address: str | None = None

    @staticmethod
    def unavailable_reason() -> str | None:
        if not DNS_SERVER.exists():
            return f"{DNS_SERVER.relative_to(REPO)} (the SPF tests' DNS server, issue 5) is not in this tree yet"
        try:
            import dnslib  # noqa: F401
        except ImportError:
            return "python3 module dnslib is missing (pip install dnslib)"
        return None

    def start(self):
        zone = self.root / "zone.json"
        zone.write_text(json.dumps(SPF_ZONE, indent=2))
        self.process = subprocess.Popen([sys.executable, str(DNS_SERVER), "--zone", str(zone), "--port", "0"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=open(self.root / "dns.stderr", "wb"), text=True)
        line = self.process.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"dns_server.py did not print its port (got {line!r}); see {self.root}/dns.stderr")
        self.address = f"127.0.0.1:{line}"

    def stop(self):
        if self.process:
            try:
                self.process.stdin.close()  # it stops when stdin closes
                self.process.wait(5)
            except (subprocess.TimeoutExpired, OSError):
                self.process.kill()
                self.process.wait()
            self.process = None
