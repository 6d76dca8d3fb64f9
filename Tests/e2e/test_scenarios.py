# The scenarios of issue 6, each asserted on what the SMTP client saw (swaks' exit code and
# the reply to each command), on Postfix's own log and on what reached the final
# destination. Scenarios of checks that are not in the backstop binary are skipped with
# the reason (see conftest._needs_checks); the harness scenarios always run.

from __future__ import annotations

import re
import threading
import time

import pytest

from conftest import MYNETWORKS_CLIENT, RATE_LIMIT, MailSystem
from mailsystem import wait_until
from policyserver import KNOWN_RECIPIENTS, ONCE_PER_RECIPIENT_CLIENT, write_recipient_table
import smtpclient

KNOWN = "alice@example.test"
OTHER_KNOWN = "bob@example.test"
UNKNOWN = "nobody@example.test"


def backstop_decisions(mail: MailSystem, sender: str) -> list[str]:
    return [l for l in mail.backstop.log_text().splitlines()
            if "decision" in l and re.search(rf'sender="?{re.escape(sender)}"?(\s|$)', l)]


def reject_lines(mail: MailSystem, since: int, stage: str, ip: str, code: str) -> list[str]:
    """smtpd's 'reject: RCPT from unknown[ip]: 550 5.1.1 ...' lines."""
    return mail.postfix.log.lines(since, rf"reject: {stage} from \S*\[{re.escape(ip)}\]: {re.escape(code)}")


# 1 -------------------------------------------------------------------------------------

def test_known_recipient_is_accepted_and_delivered(mail: MailSystem, wiring):
    token = mail.token("known")
    sender = f"{token}@pass.spf.test"
    r = mail.send(wiring, sender=sender, recipients=[KNOWN], token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    assert r.rcpt_reply(KNOWN).code == 250, r.explain()
    assert r.queue_id, r.explain()
    copy = mail.delivered(token, r.queue_id, [KNOWN])
    assert copy.envelope_sender == sender
    # Postfix asked Backstop at all three stages, over this wiring.
    def states():
        return {m.group(1) for l in backstop_decisions(mail, sender)
                if (m := re.search(r"protocol_state=(\S+)", l))}
    stages = {"RCPT", "DATA", "END-OF-MESSAGE"}
    try:
        wait_until(lambda: states() >= stages, 5, what="decisions at RCPT, DATA and END-OF-MESSAGE")
    except TimeoutError:
        raise AssertionError("Backstop's decision lines for this message:\n"
                             + "\n".join(backstop_decisions(mail, sender))) from None


def test_relay_attempt_is_refused_by_postfix_before_backstop_is_asked(mail: MailSystem, wiring):
    # Backstop sits after reject_unauth_destination (examples/postfix/main.cf).
    token = mail.token("relay")
    sender = f"{token}@pass.spf.test"
    r = mail.send(wiring, sender=sender, recipients=["someone@elsewhere.test"], token=token)
    assert r.exit_code == smtpclient.SWAKS_NO_RCPT_ACCEPTED, r.explain()
    reply = r.rcpt_reply("someone@elsewhere.test").reply[-1]
    assert reply.startswith("554 5.7.1 ") and "Relay access denied" in reply, r.explain()
    time.sleep(0.2)
    assert not backstop_decisions(mail, sender), "Backstop was asked about a relay attempt"


def test_own_clients_may_still_send_out_with_the_example_wiring(mail: MailSystem, wiring):
    # smtpd_recipient_restrictions is evaluated apart from smtpd_relay_restrictions: the
    # example permits mynetworks (and SASL users) before reject_unauth_destination, or
    # their outgoing mail would get "Relay access denied" once Backstop is wired in.
    token = mail.token("outbound")
    sender = f"{token}@pass.spf.test"
    r = mail.send(wiring, sender=sender, recipients=["someone@elsewhere.test"], token=token,
                  xclient_addr=MYNETWORKS_CLIENT)
    assert r.rcpt_reply("someone@elsewhere.test").code == 250, r.explain()


# 2 -------------------------------------------------------------------------------------

@pytest.mark.needs("recipients")
def test_unknown_recipient_is_refused_at_rcpt_and_never_queued(mail: MailSystem, wiring):
    token = mail.token("unknown")
    ip = mail.next_ip()
    mark = mail.postfix.log.mark()
    r = mail.send(wiring, recipients=[UNKNOWN], token=token, client_ip=ip)
    assert r.exit_code == smtpclient.SWAKS_NO_RCPT_ACCEPTED, r.explain()
    reply = r.rcpt_reply(UNKNOWN)
    assert reply.code == 550 and reply.reply[-1].startswith("550 5.1.1 "), r.explain()
    assert r.queue_id is None and not r.replies_to("DATA"), r.explain()
    lines = mail.postfix.log.wait_for(rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(ip)}\]: 550 5\.1\.1 <{UNKNOWN}>",
                                      since=mark)
    assert len(lines) == 1, lines
    mail.postfix.log.wait_for(rf"disconnect from \S*\[{re.escape(ip)}\]", since=mark)
    assert not mail.postfix.log.lines(mark, rf"\[{re.escape(ip)}\].*queued|client=\S*\[{re.escape(ip)}\]")
    assert not mail.sink.find(token)


@pytest.mark.needs("recipients")
def test_refusal_text_does_not_repeat_postfix_prefix(mail: MailSystem):
    # Postfix itself puts "<addr>: Recipient address rejected:" between the code and
    # Backstop's text, so the text must not carry it again (docs/postfix.md, Reply codes).
    r = mail.send(recipients=[UNKNOWN], quit_after="RCPT")
    reply = r.rcpt_reply(UNKNOWN).text
    assert reply.count("Recipient address rejected") == 1, \
        "the client sees Postfix's prefix twice; drop it from the check's reply text:\n" + reply


# 3 -------------------------------------------------------------------------------------

@pytest.mark.needs("recipients")
def test_known_and_unknown_recipient_delivers_to_the_known_only(mail: MailSystem, wiring):
    token = mail.token("mixed")
    ip = mail.next_ip()
    mark = mail.postfix.log.mark()
    r = mail.send(wiring, recipients=[KNOWN, UNKNOWN], token=token, client_ip=ip)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    assert r.rcpt_reply(KNOWN).code == 250, r.explain()
    assert r.rcpt_reply(UNKNOWN).reply[-1].startswith("550 5.1.1 "), r.explain()
    assert r.queue_id, r.explain()
    assert reject_lines(mail, mark, "RCPT", ip, "550 5.1.1"), mail.postfix.log.text(mark)
    # delivered() also checks that the sink's envelope names the known recipient only.
    mail.delivered(token, r.queue_id, [KNOWN])


# 4 -------------------------------------------------------------------------------------

@pytest.mark.needs("spf")
def test_spf_fail_is_refused_at_rcpt(mail: MailSystem, wiring):
    token = mail.token("spf-fail")
    ip = mail.next_internet_ip()  # libspf2 would pass any loopback client
    mark = mail.postfix.log.mark()
    r = mail.send(wiring, sender="forger@fail.spf.test", recipients=[KNOWN], token=token, xclient_addr=ip)
    assert r.exit_code == smtpclient.SWAKS_NO_RCPT_ACCEPTED, r.explain()
    assert r.rcpt_reply(KNOWN).reply[-1].startswith("550 5.7.23 "), r.explain()
    mail.postfix.log.wait_for(rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(ip)}\]: 550 5\.7\.23 ", since=mark)
    assert not mail.sink.find(token)


# 5 -------------------------------------------------------------------------------------

@pytest.mark.needs("spf")
def test_spf_pass_adds_received_spf_header(mail: MailSystem, wiring):
    token = mail.token("spf-pass")
    # Two recipients: two RCPT requests, but the message must carry the header once.
    r = mail.send(wiring, sender=f"{token}@pass.spf.test", recipients=[KNOWN, OTHER_KNOWN], token=token,
                  xclient_addr=mail.next_internet_ip())
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    copy = mail.delivered(token, r.queue_id, [KNOWN, OTHER_KNOWN])
    values = copy.header("Received-SPF")
    assert values and values[0].lower().startswith("pass") and "198.51.100." in values[0], copy.text
    assert len(values) == 1, f"{len(values)} Received-SPF headers for one message:\n{copy.text}"


# 5b ------------------------------------------------------------------------------------
# Administrators' issue: the Received-SPF header goes into the answer for the first
# recipient that reaches SPF. When a later check refuses that recipient, the header must
# still reach the message through the next accepted one: exactly one header, with and
# without test mode.

def _refused_then_accepted(mail: MailSystem, first: str, second: str, sender: str, expect_first: str):
    ip = ONCE_PER_RECIPIENT_CLIENT
    token = mail.token("spf-header-" + first.split("@")[0])
    r = mail.send(sender=sender, recipients=[first, second], token=token, xclient_addr=ip)
    assert r.rcpt_reply(first).reply[-1].startswith(expect_first), r.explain()
    assert r.rcpt_reply(second).code == 250, r.explain()
    return token, r


@pytest.mark.needs("spf", "ratelimit")
def test_a_refused_recipient_does_not_take_the_header_with_it(mail: MailSystem):
    ip = ONCE_PER_RECIPIENT_CLIENT
    # walter@ uses up his one recipient from this client; victor@ has his.
    r = mail.send(sender="first@pass.spf.test", recipients=["walter@example.test"], xclient_addr=ip, quit_after="RCPT")
    assert r.rcpt_reply("walter@example.test").code == 250, r.explain()
    token, r = _refused_then_accepted(mail, "walter@example.test", "victor@example.test", f"{token_sender()}@pass.spf.test", "450 4.7.1")
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    copy = mail.delivered(token, r.queue_id, ["victor@example.test"])
    values = copy.header("Received-SPF")
    assert len(values) == 1 and values[0].lower().startswith("pass"), copy.text


@pytest.mark.needs("spf", "ratelimit")
def test_test_mode_keeps_the_header(mail: MailSystem):
    ip = ONCE_PER_RECIPIENT_CLIENT
    mail.backstop.reconfigure(test_mode=True)
    try:
        # The rate limit would refuse walter@ (used up above, or now): test mode accepts him and
        # the message still carries one header.
        mail.send(sender="first@pass.spf.test", recipients=["walter@example.test"], xclient_addr=ip, quit_after="RCPT")
        token, r = _refused_then_accepted(mail, "walter@example.test", "alice@example.test", f"{token_sender()}@pass.spf.test", "250")
        copy = mail.delivered(token, r.queue_id, ["walter@example.test", "alice@example.test"])
        values = copy.header("Received-SPF")
        assert len(values) == 1 and values[0].lower().startswith("pass"), copy.text
        assert any("test_mode_would=" in l for l in backstop_decisions(mail, token_sender.last + "@pass.spf.test")), \
            mail.backstop.log_text()[-3000:]
        # An SPF fail in test mode: delivered, with the fail in its one header.
        token = mail.token("spf-test-mode-fail")
        r = mail.send(sender="forger@fail.spf.test", recipients=["alice@example.test", "bob@example.test"], token=token,
                      xclient_addr=mail.next_internet_ip())
        assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
        copy = mail.delivered(token, r.queue_id, ["alice@example.test", "bob@example.test"])
        values = copy.header("Received-SPF")
        assert len(values) == 1 and values[0].lower().startswith("fail"), copy.text
    finally:
        mail.backstop.reconfigure(test_mode=False)


def token_sender() -> str:
    """A sender local part never used before (the decision log is searched by sender)."""
    token_sender.count = getattr(token_sender, "count", 0) + 1
    token_sender.last = f"hdr{token_sender.count}x{int(time.time() * 1000) % 100000}"
    return token_sender.last


# 6 -------------------------------------------------------------------------------------

@pytest.mark.needs("ratelimit")
def test_client_over_its_rate_limit_is_deferred_and_others_are_not(mail: MailSystem):
    noisy, quiet = mail.next_ip(), mail.next_ip()
    mark = mail.postfix.log.mark()
    for i in range(RATE_LIMIT):
        r = mail.send(recipients=[KNOWN], client_ip=noisy, quit_after="RCPT")
        assert r.rcpt_reply(KNOWN).code == 250, f"request {i + 1} of {RATE_LIMIT}: " + r.explain()
    r = mail.send(recipients=[KNOWN], client_ip=noisy, quit_after="RCPT")
    assert r.rcpt_reply(KNOWN).reply[-1].startswith("450 4.7.1 "), r.explain()
    mail.postfix.log.wait_for(rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(noisy)}\]: 450 4\.7\.1 ", since=mark)

    token = mail.token("ratelimit-quiet")
    r = mail.send(recipients=[KNOWN], client_ip=quiet, token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    mail.delivered(token, r.queue_id, [KNOWN])
    assert not reject_lines(mail, mark, "RCPT", quiet, "4")


# 7 -------------------------------------------------------------------------------------

@pytest.mark.needs("bounces")
def test_null_sender_to_several_recipients_is_refused_at_data(mail: MailSystem, wiring):
    token = mail.token("null-many")
    ip = mail.next_ip()
    mark = mail.postfix.log.mark()
    r = mail.send(wiring, sender="", recipients=[KNOWN, OTHER_KNOWN], token=token, client_ip=ip,
                  helo="client.pass.spf.test")
    assert r.exit_code == smtpclient.SWAKS_DATA_FAILED, r.explain()
    assert all(e.code == 250 for e in r.replies_to("RCPT")), r.explain()
    data = r.replies_to("DATA")
    assert data and data[-1].reply[-1].startswith("550 5.7.1 "), r.explain()
    mail.postfix.log.wait_for(rf"reject: DATA from \S*\[{re.escape(ip)}\]: 550 5\.7\.1 ", since=mark)
    assert not mail.sink.find(token)

    # A genuine bounce (one recipient) still gets through.
    token = mail.token("null-one")
    r = mail.send(wiring, sender="", recipients=[KNOWN], token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    mail.delivered(token, r.queue_id, [KNOWN])


@pytest.mark.needs("bounces")
def test_null_sender_to_several_recipients_with_bdat_is_refused_too(mail: MailSystem, wiring):
    # BDAT (CHUNKING) has no DATA command; Postfix evaluates smtpd_data_restrictions at the
    # first BDAT instead (protocol_state=DATA), so the same wiring covers these clients.
    token = mail.token("null-bdat")
    ip = mail.next_ip()
    mark = mail.postfix.log.mark()
    r = smtpclient.send_bdat(mail.smtpd[wiring].port, sender="", recipients=[KNOWN, OTHER_KNOWN],
                             client_ip=ip, token=token)
    assert all(e.code == 250 for e in r.replies_to("RCPT")), r.explain()
    assert r.end_of_data and r.end_of_data.reply[-1].startswith("550 5.7.1 "), r.explain()
    mail.postfix.log.wait_for(rf"reject: BDAT from \S*\[{re.escape(ip)}\]: 550 5\.7\.1 ", since=mark)
    assert not mail.sink.find(token)


# 8 -------------------------------------------------------------------------------------

@pytest.mark.needs("recipients")
def test_recipient_table_edit_takes_effect_while_receiving(mail: MailSystem):
    newcomer = "carol@example.test"
    master_pid, backstop_pid = mail.postfix.master_pid(), mail.backstop.pid
    mark = mail.postfix.log.mark()
    r = mail.send(recipients=[newcomer], quit_after="RCPT")
    assert r.rcpt_reply(newcomer).reply[-1].startswith("550 5.1.1 "), r.explain()

    # Mail keeps arriving while the table changes; none of it may be refused or lost.
    stop = threading.Event()
    background: list[tuple[str, smtpclient.SmtpResult]] = []

    def stream():
        while not stop.is_set():
            token = mail.token("during-edit")
            background.append((token, mail.send(recipients=[KNOWN], token=token)))

    sender_thread = threading.Thread(target=stream)
    sender_thread.start()
    try:
        time.sleep(0.5)
        write_recipient_table(mail.table, KNOWN_RECIPIENTS + [newcomer])
        started = time.monotonic()
        wait_until(lambda: mail.send(recipients=[newcomer], quit_after="RCPT").rcpt_reply(newcomer).code == 250,
                   20, interval=0.2, what=f"{newcomer} to be accepted after the table edit")
        print(f"[e2e] table edit took effect after {time.monotonic() - started:.1f}s")
        token = mail.token("newcomer")
        r = mail.send(recipients=[newcomer], token=token)
        assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
        mail.delivered(token, r.queue_id, [newcomer])

        # ...and removing the line takes effect too.
        write_recipient_table(mail.table, KNOWN_RECIPIENTS)
        wait_until(lambda: mail.send(recipients=[newcomer], quit_after="RCPT").rcpt_reply(newcomer).code == 550,
                   20, interval=0.2, what=f"{newcomer} to be refused again")
    finally:
        write_recipient_table(mail.table, KNOWN_RECIPIENTS)
        stop.set()
        sender_thread.join(60)

    assert len(background) >= 2, f"only {len(background)} messages were sent during the edit"
    print(f"[e2e] {len(background)} messages arrived during the table edits")
    for token, r in background:
        assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
        mail.delivered(token, r.queue_id, [KNOWN])
    # Neither Postfix nor Backstop was restarted or reloaded by hand.
    assert mail.postfix.master_pid() == master_pid
    assert mail.backstop.pid == backstop_pid
    assert not mail.postfix.log.lines(mark, r"postfix/master\[\d+\]: reload")


# 9 -------------------------------------------------------------------------------------

def test_stopped_backstop_gets_default_action_and_restart_needs_no_postfix_reload(mail: MailSystem, wiring):
    master_pid = mail.postfix.master_pid()
    mark = mail.postfix.log.mark()
    mail.backstop.stop()
    try:
        # default_action=DUNNO: mail is accepted as if Backstop had no opinion.
        token = mail.token("backstop-down")
        r = mail.send(wiring, recipients=[KNOWN], token=token)
        assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
        copy = mail.delivered(token, r.queue_id, [KNOWN])
        server = {"tcp": r"127\.0\.0\.1:\d+", "unix": r"private/backstop"}[wiring]
        mail.postfix.log.wait_for(rf"warning: problem talking to server {server}: ", since=mark)
        assert not copy.header("Received-SPF")
        # What DUNNO gives up (docs/postfix.md): an unknown recipient is accepted too.
        token = mail.token("backstop-down-unknown")
        r = mail.send(wiring, recipients=[UNKNOWN], token=token)
        assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
        mail.delivered(token, r.queue_id, [UNKNOWN])
    finally:
        mail.backstop.start()

    # Backstop is asked again, over the same smtpd processes, without a Postfix reload.
    token = mail.token("backstop-back")
    sender = f"{token}@pass.spf.test"
    r = mail.send(wiring, sender=sender, recipients=[KNOWN], token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    mail.delivered(token, r.queue_id, [KNOWN])
    assert backstop_decisions(mail, sender), "Backstop was not asked after its restart"
    if "recipients" not in mail.missing:
        r = mail.send(wiring, recipients=[UNKNOWN], quit_after="RCPT")
        assert r.rcpt_reply(UNKNOWN).reply[-1].startswith("550 5.1.1 "), r.explain()
    assert mail.postfix.master_pid() == master_pid
    assert not mail.postfix.log.lines(mark, r"postfix/master\[\d+\]: reload")
