# The end-to-end stage: one private Postfix instance (mailsystem.py), smtp-sink as the
# final destination, the loopback DNS server and one Backstop process (policyserver.py),
# started once for the whole session and always stopped at the end, also on failure.
# Postfix reaches Backstop both ways an administrator wires it (docs/postfix.md), with the
# lines of examples/postfix/main.cf: smtpd "tcp" uses inet:127.0.0.1:PORT, smtpd "unix"
# uses unix:private/backstop from inside its chroot. Both switch the example's BATV lines
# off; smtpd "batv" runs with every line of the example, and smtpd "submit" is the
# submission port of the same site (docs/batv.md). Tests send mail with swaks and assert
# on the SMTP replies, Postfix's log and what reached the sink.

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailsystem import PostfixInstance, SmtpdService, SmtpSink, free_port, wait_until
from policyserver import (CHECK_SETUPS, KNOWN_RECIPIENTS, RECIPIENT_TABLE, REPO, Backstop, DnsServer,
                          Environment, backstop_binary, batv_rollout_date, probe_checks,
                          write_recipient_table)
import smtpclient

EXAMPLE_MAIN_CF = REPO / "examples" / "postfix" / "main.cf"
RATE_LIMIT = 5   # RCPT requests per client address; every send uses a fresh address unless told
WIRINGS = ["tcp", "unix"]
# The example's BATV lines, switched off for an smtpd listener (master.cf -o). The scenarios of
# smtpd "tcp" and "unix" predate BATV, and one of them is exactly what BATV's lookups
# change: with Backstop stopped, their mail must still be accepted. smtpd itself looks
# recipients up in recipient_canonical_maps and relay_recipient_maps; cleanup's mappings
# (signing, stripping) are switched off for its mail by receive_override_options.
BATV_OFF = {
    "receive_override_options": "no_address_mappings",
    "recipient_canonical_maps": "",
    "relay_recipient_maps": "",
}
# The submission port: clients in mynetworks (a test client names 192.0.2.250 with XCLIENT)
# may send anywhere, everyone else nothing. Its mail goes through cleanup like all other
# mail, so the example's sender_canonical_maps signs it.
SUBMISSION = {
    "smtpd_relay_restrictions": "permit_mynetworks,reject",
    "smtpd_recipient_restrictions": "permit_mynetworks,reject",
}
MYNETWORKS_CLIENT = "192.0.2.250"


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: 1 if item.get_closest_marker("after_all") else 0)


@pytest.hookimpl(hookwrapper=True)  # old-style wrapper: Debian 12 has pytest 7.2 / pluggy 1.0
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.session.config._e2e_failed = True


def wiring_from_example(tcp_port: int, socketmap_port: int) -> tuple[str, str]:
    """examples/postfix/main.cf with its TCP and socketmap ports replaced, and the
    definition of backstop_unix_policy taken from the commented Unix-socket variant in the
    same file. Fails loudly if the example no longer has the shape the test relies on."""
    text = EXAMPLE_MAIN_CF.read_text()
    assert "inet:127.0.0.1:10033," in text, f"{EXAMPLE_MAIN_CF}: TCP wiring not found"
    for parameter, table in (("sender_canonical_maps", "batv-sign"), ("recipient_canonical_maps", "batv-strip"),
                             ("relay_recipient_maps", "recipients")):
        assert re.search(rf"^{parameter} = socketmap:inet:127\.0\.0\.1:10034:{table}$", text, re.M), \
            f"{EXAMPLE_MAIN_CF}: {parameter} = socketmap:inet:127.0.0.1:10034:{table} not found"
    main_cf = text.replace("inet:127.0.0.1:10033,", f"inet:127.0.0.1:{tcp_port},")
    main_cf = main_cf.replace("socketmap:inet:127.0.0.1:10034:", f"socketmap:inet:127.0.0.1:{socketmap_port}:")
    m = re.search(r"^#backstop_policy = (check_policy_service \{)\n#(\s+unix:private/backstop,[^\n]*)$",
                  text, re.M)
    assert m, f"{EXAMPLE_MAIN_CF}: commented unix:private/backstop variant not found"
    unix_def = f"backstop_unix_policy = {m.group(1)}\n{m.group(2)}\n"
    return main_cf, unix_def


def machine_postfix_fingerprint() -> list[tuple]:
    """Owner, mode, size and mtime of everything in the machine's own Postfix directories."""
    out = []
    for top in ("/etc/postfix", "/var/spool/postfix", "/var/lib/postfix"):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                out.append((p, st.st_uid, st.st_gid, st.st_mode, st.st_size, st.st_mtime_ns))
    return sorted(out)


@dataclass
class MailSystem:
    root: Path
    postfix: PostfixInstance
    sink: SmtpSink
    backstop: Backstop
    smtpd: dict[str, SmtpdService]
    missing: dict[str, str]                       # check name -> why it is unavailable
    table: Path
    socketmap_port: int                           # Backstop's socketmap listener (BATV)
    machine_fingerprint: list[tuple] = field(repr=False)
    # Postfix log lines with warnings a scenario caused on purpose and asserted itself.
    excused_log_lines: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)
    _ips: itertools.count = field(default_factory=lambda: itertools.count(10))
    _tokens: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next_ip(self) -> str:
        """A loopback address no other send used, so rate-limit counters never mix."""
        n = next(self._ips)
        return f"127.0.{n // 250}.{n % 250 + 2}"

    def next_internet_ip(self) -> str:
        """A TEST-NET-2 address (198.51.100.0/24) for XCLIENT: SPF-permitted for pass.spf.test."""
        n = next(self._ips)
        return f"198.51.100.{n % 250 + 2}"

    def token(self, hint: str = "t") -> str:
        return f"{re.sub(r'[^A-Za-z0-9]+', '-', hint)[-40:]}-{next(self._tokens)}-{os.getpid()}"

    def send(self, wiring: str = "tcp", **kw) -> smtpclient.SmtpResult:
        kw.setdefault("client_ip", self.next_ip())
        kw.setdefault("sender", "someone@pass.spf.test")
        return smtpclient.send(self.smtpd[wiring].port, **kw)

    def delivered(self, token: str, queue_id: str, recipients: list[str], timeout: float = 15):
        """Waits until Postfix removed the queue file, asserts every recipient got
        status=sent to the sink and nothing else, and returns the sink's copy."""
        self.postfix.log.wait_for(rf"\b{queue_id}: removed\b", timeout=timeout)
        lines = self.postfix.log.lines(0, rf"\b{queue_id}: to=<")
        sent = sorted(re.search(r"to=<([^>]*)>", l).group(1) for l in lines if "status=sent" in l)
        assert sent == sorted(recipients), f"delivery of {queue_id}:\n" + "\n".join(lines)
        assert all("status=sent" in l for l in lines), "\n".join(lines)
        copies = wait_until(lambda: self.sink.find(token), 5, what=f"message {token} at the sink")
        assert len(copies) == 1, f"{len(copies)} copies of {token} at the sink"
        assert sorted(copies[0].envelope_recipients) == sorted(recipients)
        return copies[0]


@pytest.fixture(scope="session")
def mail(request) -> MailSystem:
    binary = backstop_binary()
    if not binary.exists():
        pytest.fail(f"backstop binary {binary} not found: build it (swift build --product backstop) "
                    "or set BACKSTOP_BIN", pytrace=False)
    fingerprint = machine_postfix_fingerprint()
    root = Path(tempfile.mkdtemp(prefix="backstop-e2e-"))
    os.chmod(root, 0o755)  # Postfix's unprivileged daemons must reach the queue and log
    print(f"\n[e2e] working directory {root}")

    with ExitStack() as stack:
        missing = {k: v for k, v in probe_checks(binary, root).items() if v}
        strict = os.environ.get("BACKSTOP_E2E_REQUIRE_ALL_CHECKS") == "1"
        if strict and missing:
            pytest.fail("BACKSTOP_E2E_REQUIRE_ALL_CHECKS=1 but: " + "; ".join(missing.values()), pytrace=False)

        dns_address = None
        if "spf" not in missing:
            reason = DnsServer.unavailable_reason()
            if reason:
                if strict:
                    pytest.fail(reason, pytrace=False)
                missing["spf"] = reason
            else:
                dns = DnsServer(root)
                stack.callback(dns.stop)
                dns.start()
                dns_address = dns.address

        sink = SmtpSink(root)
        stack.callback(sink.stop)
        sink.start()

        policy_port, socketmap_port = free_port(), free_port()
        main_cf, unix_def = wiring_from_example(policy_port, socketmap_port)
        smtpd = {
            "tcp": SmtpdService("smtpd-tcp", overrides=dict(BATV_OFF)),
            "unix": SmtpdService("smtpd-unix", overrides={"backstop_policy": "$backstop_unix_policy", **BATV_OFF}),
            "batv": SmtpdService("smtpd-batv"),
            "submit": SmtpdService("smtpd-submit", overrides=dict(SUBMISSION)),
        }
        postfix = PostfixInstance(root, sink, main_cf + "\n" + unix_def, list(smtpd.values()))
        stack.callback(postfix.stop)
        t = time.monotonic()
        postfix.start()
        print(f"[e2e] postfix started in {time.monotonic() - t:.1f}s")

        table = root / RECIPIENT_TABLE
        write_recipient_table(table, KNOWN_RECIPIENTS)
        env = Environment(root=root, dns_address=dns_address, rate_limit=RATE_LIMIT,
                          batv_verify_since=batv_rollout_date())
        enabled = [s for s in CHECK_SETUPS if s.name not in missing]
        for setup in enabled:
            if setup.prepare:
                setup.prepare(env)
        # The socketmap listener came with BATV; a binary without BATV has neither.
        socketmaps = [] if "batv" in missing else [f"127.0.0.1:{socketmap_port}"]
        backstop = Backstop(binary, root,
                            [f"127.0.0.1:{policy_port}", f"unix:{postfix.queue_dir}/private/backstop"],
                            "postfix", enabled, env, socketmaps)
        stack.callback(backstop.close)
        backstop.write_config()
        backstop.check_config()
        backstop.start()

        system = MailSystem(root, postfix, sink, backstop, smtpd, missing, table, socketmap_port, fingerprint)
        yield system

    # Everything is stopped; keep the directory when something failed (or when asked).
    if getattr(request.config, "_e2e_failed", False) or os.environ.get("BACKSTOP_E2E_KEEP") == "1":
        print(f"\n[e2e] kept {root} (maillog, backstop.log, sink/, etc/)")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _needs_checks(request):
    marker = request.node.get_closest_marker("needs")
    if marker is None:
        return
    system: MailSystem = request.getfixturevalue("mail")
    reasons = [system.missing[c] for c in marker.args if c in system.missing]
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.fixture(params=WIRINGS)
def wiring(request) -> str:
    """Run the test once through each way Postfix reaches Backstop."""
    return request.param
