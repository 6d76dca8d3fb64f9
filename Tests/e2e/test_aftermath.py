# Whole-run assertions, run after every scenario (conftest orders `after_all` last): the
# point of refusing during SMTP is that nothing is ever bounced, so a single DSN, a
# deferral or a message left in the queue fails the stage; and the machine's own Postfix
# must be exactly as it was.

from __future__ import annotations

import pytest

from conftest import MailSystem, machine_postfix_fingerprint

# Warnings the scenarios cause on purpose (Backstop stopped in scenario 9).
EXPECTED_WARNINGS = ("problem talking to server", "connect to 127.0.0.1:", "connect to private/backstop")
# Postfix's cleanup compares a queue file's time stamp with the clock, and on a machine whose
# file system time runs a second ahead of time() (seen in CI's container) it warns and resets
# the stamps. Nothing Backstop does causes it, and it says nothing about mail handling.
CLOCK_WARNINGS = ("seconds ahead of local clock", "resetting file time stamps")


@pytest.mark.after_all
def test_no_backscatter_and_empty_queue(mail: MailSystem):
    mail.postfix.wait_queue_empty(timeout=30)
    assert "Mail queue is empty" in mail.postfix.queue_listing()
    log = mail.postfix.log.lines()
    dsn = [l for l in log if "postfix/bounce[" in l or "notification:" in l or "status=bounced" in l]
    assert not dsn, "Postfix generated delivery status notifications:\n" + "\n".join(dsn)
    deferred = [l for l in log if "status=deferred" in l or "status=expired" in l]
    assert not deferred, "\n".join(deferred)
    # Nothing with a null sender reached the sink except what the tests sent themselves.
    strays = [m.path.name for m in mail.sink.messages()
              if m.envelope_sender == "" and "X-Backstop-Test:" not in m.text]
    assert not strays, f"bounce-like messages at the sink: {strays}"


@pytest.mark.after_all
def test_postfix_log_has_no_unexpected_warnings(mail: MailSystem):
    # mail.excused_log_lines: lines a scenario caused on purpose and asserted on itself
    # (Backstop's socketmap stopped, in test_batv.py).
    bad = [l for l in mail.postfix.log.lines()
           if any(w in l for w in ("warning:", "fatal:", "panic:", "error:"))
           and not any(e in l for e in EXPECTED_WARNINGS + CLOCK_WARNINGS)
           and l not in mail.excused_log_lines]
    assert not bad, "\n".join(bad)


@pytest.mark.after_all
def test_machine_postfix_untouched(mail: MailSystem):
    assert machine_postfix_fingerprint() == mail.machine_fingerprint, \
        "the machine's own /etc/postfix, /var/spool/postfix or /var/lib/postfix changed"


@pytest.mark.after_all
def test_backstop_log_has_no_warnings(mail: MailSystem):
    # Backstop's lines are "<timestamp> <level> <message>".
    bad = [l for l in mail.backstop.log_text().splitlines()
           if len(l.split(" ", 2)) > 1 and l.split(" ", 2)[1] in ("warning", "error", "critical")]
    assert not bad, "\n".join(bad)
