# A private Postfix instance and an smtp-sink for the end-to-end tests: everything lives in
# one temporary directory (config, queue, data, log), listens on 127.0.0.1 only, and
# relays every accepted message to smtp-sink on another loopback port, so nothing leaves
# the machine. It never reads or writes the machine's own Postfix configuration
# (/etc/postfix) or queue: every postfix/postconf/postqueue command gets `-c <our dir>`.
# It deliberately knows nothing about Backstop's checks; conftest.py wires Backstop in.

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin") or "/usr/sbin/postqueue"
POSTMAP = shutil.which("postmap", path="/usr/sbin:/usr/bin") or "/usr/sbin/postmap"
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") or "/usr/sbin/smtp-sink"


_handed_out: set = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind port 0, read it back), and not one this run
    has handed out before: the kernel may give the same free port twice before either binds."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def smtp_greets(port: int) -> bool:
    """True when an SMTP server on 127.0.0.1:port sends its 220 greeting. A listening port
    alone proves nothing: master holds it even when every smtpd it starts dies."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            greeting = s.recv(512)
            s.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220")
    except OSError:
        return False


def can_connect(address: str) -> bool:
    """address: "host:port" or "unix:/path"."""
    try:
        if address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(address[5:])
        else:
            host, port = address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=0.5):
                pass
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Postfix's log


class MailLog:
    """Postfix's maillog_file. Tests take a `mark()` before acting and search from it, so
    each test looks only at the lines its own mail produced."""

    def __init__(self, path: Path):
        self.path = path

    def text(self, since: int = 0) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def lines(self, since: int = 0, pattern: str | None = None) -> list[str]:
        lines = self.text(since).splitlines()
        if pattern is None:
            return lines
        rx = re.compile(pattern)
        return [line for line in lines if rx.search(line)]

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 10.0) -> list[str]:
        """Waits until at least one line matches; returns all matching lines."""
        try:
            return wait_until(lambda: self.lines(since, pattern), timeout, what=f"log line /{pattern}/")
        except TimeoutError:
            tail = "\n".join(self.lines(since)[-40:])
            raise AssertionError(f"no line matching /{pattern}/ in {self.path} within {timeout}s; "
                                 f"log since mark:\n{tail}") from None


# ---------------------------------------------------------------------------------------
# smtp-sink: the final destination


@dataclass
class DeliveredMessage:
    path: Path
    text: str

    @property
    def envelope_recipients(self) -> list[str]:
        # smtp-sink writes the envelope as X-Rcpt-Args: <addr> lines before the message.
        return re.findall(r"^X-Rcpt-Args: <([^>]*)>", self.text, re.M)

    @property
    def envelope_sender(self) -> str | None:
        m = re.search(r"^X-Mail-Args: <([^>]*)>", self.text, re.M)
        return m.group(1) if m else None

    def header(self, name: str) -> list[str]:
        """Values of a header in the message (unfolded), after smtp-sink's envelope lines."""
        head = self.text.split("\n\n", 1)[0]
        unfolded = re.sub(r"\r?\n[ \t]+", " ", head)
        rx = re.compile(rf"^{re.escape(name)}:\s*(.*)$", re.M | re.I)
        return [v.strip() for v in rx.findall(unfolded)]


class SmtpSink:
    """Postfix's smtp-sink, dumping every transaction into its own file."""

    def __init__(self, root: Path):
        self.dir = root / "sink"
        self.dir.mkdir()
        # smtp-sink started as root drops to "nobody" after binding; the dump files are
        # written after that.
        nobody = pwd.getpwnam("nobody")
        os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.stderr = open(root / "sink.stderr", "wb")
        self.process: subprocess.Popen | None = None

    def start(self):
        self.process = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-h", "sink.backstop.test", "-d", str(self.dir) + "/msg.",
             self.address, "64"],
            stdout=subprocess.DEVNULL, stderr=self.stderr)
        wait_until(lambda: self.process.poll() is not None or can_connect(self.address), 5,
                   what="smtp-sink to listen")
        if self.process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited with {self.process.returncode}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()

    def messages(self) -> list[DeliveredMessage]:
        out = []
        for p in sorted(self.dir.glob("msg.*")):
            out.append(DeliveredMessage(p, p.read_text("utf-8", "replace")))
        return out

    def find(self, token: str) -> list[DeliveredMessage]:
        """Messages carrying the test's unique token (in the X-Backstop-Test header)."""
        return [m for m in self.messages() if token in m.text]


# ---------------------------------------------------------------------------------------
# the Postfix instance


@dataclass
class SmtpdService:
    """One smtpd listener in master.cf and the master.cf -o overrides it runs with."""
    name: str
    port: int = field(default_factory=free_port)
    overrides: dict[str, str] = field(default_factory=dict)
    chroot: bool = True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class PostfixInstance:
    """A root-started Postfix with mail_owner = postfix, all state under `root`."""

    def __init__(self, root: Path, sink: SmtpSink, main_cf_extra: str, services: list[SmtpdService]):
        self.root = root
        self.config_dir = root / "etc"
        self.queue_dir = root / "spool"
        self.data_dir = root / "data"
        self.log = MailLog(root / "maillog")
        self.sink = sink
        self.services = services
        self.main_cf_extra = main_cf_extra
        self.started = False

    # -- configuration ---------------------------------------------------------------

    def main_cf(self) -> str:
        sink = self.sink.address
        return f"""\
# Private Postfix instance of the Backstop end-to-end tests (generated; see Tests/e2e).
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.backstop.test
mydomain = backstop.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_bind_address = 127.0.0.1

# Log into a file of our own (postlogd, Postfix >= 3.4), not the machine's syslog.
maillog_file = {self.log.path}
maillog_file_prefixes = {self.root}

# Receive for example.test only and relay it to smtp-sink; no local delivery at all.
# (relay_recipient_maps is part of the wiring conftest.py appends.)
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = example.test
default_transport = smtp:[127.0.0.1]:{self.sink.port}
relay_transport = smtp:[127.0.0.1]:{self.sink.port}
local_transport = error:5.1.1 no local delivery in the test instance

# Nothing leaves loopback, and nothing waits for DNS.
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no

# Test clients (127.0.0.x) are strangers, as on the Internet: relaying is refused by
# Postfix itself and everything else is up to the restrictions below. 192.0.2.250 (named
# with XCLIENT) is the site's own network, which may relay, as in Debian's default.
mynetworks = 192.0.2.250/32
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# The SPF scenarios need a client address off loopback (libspf2 passes loopback clients):
# the test client names one with XCLIENT, while the connection stays on loopback.
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_helo_required = no
smtpd_client_connection_rate_limit = 0

# Queue quickly, give up never during the test (a deferral shows as a failure instead).
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 200
in_flow_delay = 0

{self.main_cf_extra}
"""

    def master_cf(self) -> str:
        chrooted = lambda s: "y" if s.chroot else "n"
        lines = [
            "# Private Postfix instance of the Backstop end-to-end tests (generated).",
            "# service type  private unpriv  chroot  wakeup  maxproc command",
        ]
        for s in self.services:
            lines.append(f"{s.address} inet n - {chrooted(s)} - - smtpd")
            lines.append(f"  -o syslog_name=postfix/{s.name}")
            for k, v in s.overrides.items():
                lines.append(f"  -o {k}={v}")
        lines += [
            "pickup    unix  n       -       n       60      1       pickup",
            "cleanup   unix  n       -       n       -       0       cleanup",
            "qmgr      unix  n       -       n       300     1       qmgr",
            "rewrite   unix  -       -       n       -       -       trivial-rewrite",
            "bounce    unix  -       -       n       -       0       bounce",
            "defer     unix  -       -       n       -       0       bounce",
            "trace     unix  -       -       n       -       0       bounce",
            "verify    unix  -       -       n       -       1       verify",
            "flush     unix  n       -       n       1000?   0       flush",
            "proxymap  unix  -       -       n       -       -       proxymap",
            "smtp      unix  -       -       n       -       -       smtp",
            "relay     unix  -       -       n       -       -       smtp",
            "showq     unix  n       -       n       -       -       showq",
            "error     unix  -       -       n       -       -       error",
            "retry     unix  -       -       n       -       -       error",
            "discard   unix  -       -       n       -       -       discard",
            "anvil     unix  -       -       n       -       1       anvil",
            "scache    unix  -       -       n       -       1       scache",
            "postlog   unix-dgram n  -       n       -       1       postlogd",
        ]
        return "\n".join(lines) + "\n"

    # -- lifecycle -------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        env = dict(os.environ, MAIL_CONFIG=str(self.config_dir))
        p = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}\n"
                               f"maillog:\n{self.log.text()[-3000:]}")
        return p

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(POSTFIX, "-c", str(self.config_dir), *args, check=check)

    def postconf(self, *args: str) -> str:
        return self._run(POSTCONF, "-c", str(self.config_dir), *args).stdout

    def lookup(self, table: str, key: str) -> str | None:
        """`postmap -q key table`: the value a Postfix daemon's lookup gets (None: not found).
        A lookup error (exit status other than 0 and 1) raises."""
        p = self._run(POSTMAP, "-c", str(self.config_dir), "-q", key, table, check=False)
        if p.returncode == 0:
            return p.stdout.rstrip("\n")
        if p.returncode == 1 and not p.stderr.strip():
            return None
        raise RuntimeError(f"postmap -q {key!r} {table} failed ({p.returncode}): {p.stdout}{p.stderr}")

    def write_config(self):
        self.config_dir.mkdir(exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.queue_dir.mkdir(exist_ok=True)
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())
        # smtpd runs chrooted in the queue directory like on Debian; it needs these
        # few files there (Debian's init script copies the same ones).
        etc = self.queue_dir / "etc"
        etc.mkdir(exist_ok=True)
        for name in ("localtime", "services", "hosts", "nsswitch.conf", "resolv.conf", "host.conf"):
            src = Path("/etc") / name
            if src.exists():
                shutil.copy(src, etc / name, follow_symlinks=True)

    def start(self):
        self.write_config()
        # Reject configuration mistakes before starting anything.
        warnings = self._run(POSTCONF, "-c", str(self.config_dir), "-n").stderr
        if "warning" in warnings:
            raise RuntimeError(f"postconf warns about the generated main.cf:\n{warnings}")
        # `postfix start` runs post-install create-missing (queue directories with the
        # right owners: postfix, postdrop) and the integrity check, then the master.
        self.postfix("start")
        self.started = True
        for s in self.services:
            wait_until(lambda: smtp_greets(s.port), 10, interval=0.2, what=f"smtpd greeting on {s.address}")

    def stop(self):
        if self.started:
            self.postfix("stop", check=False)
            self.started = False

    def master_pid(self) -> int:
        return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])

    def reload(self):
        self.postfix("reload")

    # -- queue -----------------------------------------------------------------------

    def queue_listing(self) -> str:
        return self._run(POSTQUEUE, "-c", str(self.config_dir), "-p").stdout

    def queue_is_empty(self) -> bool:
        return "Mail queue is empty" in self.queue_listing()

    def wait_queue_empty(self, timeout: float = 20):
        try:
            wait_until(self.queue_is_empty, timeout, interval=0.2, what="empty mail queue")
        except TimeoutError:
            raise AssertionError(f"queue not empty after {timeout}s:\n{self.queue_listing()}") from None
