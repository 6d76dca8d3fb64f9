# BATV behind a real Postfix (docs/batv.md). Backstop's socketmap listener signs the
# envelope sender of our mail as it passes cleanup (batv-sign), takes a valid tag off the
# recipient of a bounce (batv-strip) and lets smtpd refuse unknown recipients from the
# live recipient table (recipients); its batv check refuses, at RCPT, bounces to us that
# carry no valid tag. smtpd "batv" runs with every line of examples/postfix/main.cf,
# smtpd "submit" is the site's submission port (conftest.py). Every tag sent or expected
# here is computed by prvs.py, which shares no code with Backstop.
#
# The session runs in the roll-out phase ([batv] verify_since in the future, see
# policyserver.batv_rollout_date): untagged bounces are accepted, forged tags refused.
# Scenarios about untagged bounces reload Backstop without verify_since while they run.

from __future__ import annotations

import contextlib
import re
import subprocess
import time

import pytest

from conftest import MYNETWORKS_CLIENT, MailSystem
from mailsystem import wait_until
from policyserver import (BATV_EXCLUDED_SENDER, BATV_KEYS, BATV_LIFETIME_DAYS, KNOWN_RECIPIENTS, write_batv_keys,
                          write_recipient_table)
import prvs
import smtpclient

ALICE = "alice@example.test"
POSTMASTER = "postmaster@example.test"       # exempt: a bare "postmaster" in [batv] exempt
FRIEND = "friend@elsewhere.test"              # somewhere on the Internet (the sink takes it)
NEWEST, OLDER = BATV_KEYS[-1], BATV_KEYS[0]   # (key number, secret); the last line signs
UNKNOWN_USER_IN_RELAY_TABLE = "User unknown in relay recipient table"   # Postfix's own words


def tag(address: str, key: tuple[str, str] = NEWEST, day: int | None = None) -> str:
    return prvs.sign(address, key[0], key[1], BATV_LIFETIME_DAYS, day)


def tags_made_between(address: str, first_day: int, key: tuple[str, str] = NEWEST) -> set[str]:
    """The tags Backstop may have made for address since first_day (midnight UTC may
    pass while a test runs)."""
    return {tag(address, key, day=d) for d in range(first_day, prvs.day_number() + 1)}


def decisions_for(mail: MailSystem, recipient: str) -> list[str]:
    """Backstop's decision lines about this recipient (values with '=' are quoted)."""
    rx = re.compile(rf'\srecipient="?{re.escape(recipient)}"?(\s|$)')
    return [l for l in mail.backstop.log_text().splitlines() if "decision " in l and rx.search(l)]


def bounce(mail: MailSystem, recipient: str, **kw) -> smtpclient.SmtpResult:
    """A bounce (MAIL FROM:<>) from a client on the Internet, to the smtpd that has the
    example's whole wiring."""
    return mail.send("batv", sender="", recipients=[recipient], **kw)


def submit(mail: MailSystem, sender: str, **kw) -> smtpclient.SmtpResult:
    """Mail from one of our users' programs, through the submission port."""
    return mail.send("submit", sender=sender, recipients=[FRIEND], xclient_addr=MYNETWORKS_CLIENT, **kw)


@contextlib.contextmanager
def enforcing(mail: MailSystem):
    """Backstop reloaded without verify_since (untagged bounces refused) for a while."""
    rollout = mail.backstop.env.batv_verify_since
    mail.backstop.reconfigure(batv_verify_since=None)
    try:
        yield
    finally:
        mail.backstop.reconfigure(batv_verify_since=rollout)


def assert_refused_by_batv(mail: MailSystem, r: smtpclient.SmtpResult, recipient: str, ip: str, mark: int,
                           reason: str, token: str):
    assert r.exit_code == smtpclient.SWAKS_NO_RCPT_ACCEPTED, r.explain()
    assert r.rcpt_reply(recipient).reply[-1].startswith("550 5.7.1 "), r.explain()
    assert r.queue_id is None and not r.replies_to("DATA"), r.explain()
    mail.postfix.log.wait_for(rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(ip)}\]: 550 5\.7\.1 "
                              rf"<{re.escape(recipient)}>: Recipient address rejected: ", since=mark)
    def refusals() -> list[str]:   # this client's: the same address may have been sent before
        return [l for l in decisions_for(mail, recipient) if f" client_address={ip} " in l and " check=batv " in l]

    try:
        lines = wait_until(refusals, 5, what="Backstop's decision line")
    except TimeoutError:
        raise AssertionError(f"no check=batv decision for {recipient} from {ip} in backstop.log:\n"
                             + "\n".join(decisions_for(mail, recipient))) from None
    assert len(lines) == 1 and re.search(rf"\sreason={reason}(\s|$)", lines[0]), "\n".join(lines)
    assert not mail.sink.find(token)


# the Python side ------------------------------------------------------------------------

def test_prvs_known_answers():
    # Worked out with openssl, independently of prvs.py:
    #   printf '%s' 1123alice@example.test | openssl dgst -sha1 -hmac 'sixteen char key'
    assert prvs.signature("sixteen char key", "1", "123", "alice@example.test") == "f0fbcd"
    # The whole "KDDD" + address is lowercased before hashing.
    assert prvs.signature("sixteen char key", "1", "123", "Alice@Example.TEST") == "f0fbcd"
    # Day 20451 (2025-12-29) + 7 days = 20458: DDD 458.
    #   printf '%s' 2458alice@example.test | openssl dgst -sha1 -hmac 'newest key signs 9d2e 7b'
    assert prvs.sign("alice@example.test", "2", "newest key signs 9d2e 7b", 7, 20451) \
        == "prvs=2458136703=alice@example.test"
    assert prvs.expiry_code(20995, 7) == "002"   # DDD wraps at 1000
    assert prvs.day_number(0) == 0 and prvs.day_number(86399.9) == 0 and prvs.day_number(86400) == 1
    assert prvs.reverse("prvs=2458136703=alice@example.test") == "prvs=alice=2458136703@example.test"


# signing ------------------------------------------------------------------------------

@pytest.mark.needs("batv")
def test_mail_from_our_users_leaves_with_a_signed_envelope_sender(mail: MailSystem):
    first_day = prvs.day_number()
    token = mail.token("batv-signed")
    r = submit(mail, ALICE, token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    copy = mail.delivered(token, r.queue_id, [FRIEND])
    expected = tags_made_between(ALICE, first_day)
    assert copy.envelope_sender in expected, f"envelope sender at the sink: {copy.envelope_sender!r}, " \
                                             f"computed: {sorted(expected)}"
    mail.postfix.log.wait_for(rf"\b{r.queue_id}: from=<{re.escape(copy.envelope_sender)}>,")
    # sender_canonical_classes = envelope_sender: the From: header is the user's own.
    assert copy.header("From") and all("prvs=" not in v and ALICE in v for v in copy.header("From")), copy.text


@pytest.mark.needs("batv")
def test_excluded_sender_leaves_unsigned(mail: MailSystem):
    token = mail.token("batv-excluded")
    r = submit(mail, BATV_EXCLUDED_SENDER, token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    copy = mail.delivered(token, r.queue_id, [FRIEND])
    assert copy.envelope_sender == BATV_EXCLUDED_SENDER


@pytest.mark.needs("batv")
def test_ordinary_mail_from_outside_is_not_rewritten(mail: MailSystem):
    token = mail.token("batv-ordinary")
    sender = f"{token}@pass.spf.test"
    r = mail.send("batv", sender=sender, recipients=[ALICE], token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    copy = mail.delivered(token, r.queue_id, [ALICE])
    assert copy.envelope_sender == sender
    assert not mail.postfix.log.lines(0, rf"\b{r.queue_id}: .*orig_to="), "the recipient was rewritten"


@pytest.mark.needs("batv")
def test_our_domain_as_sender_from_outside_is_signed_too(mail: MailSystem):
    # sender_canonical_maps applies to all mail through cleanup (docs/batv.md, pitfalls): a
    # stranger's mail with a sender in our domain leaves cleanup signed. Harmless: a bounce
    # of it then comes back with a valid tag, as one of our own would.
    first_day = prvs.day_number()
    token = mail.token("batv-inbound-ours")
    r = mail.send("batv", sender="bob@example.test", recipients=[ALICE], token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    copy = mail.delivered(token, r.queue_id, [ALICE])
    assert copy.envelope_sender in tags_made_between("bob@example.test", first_day), copy.envelope_sender


# bounces coming back ------------------------------------------------------------------

@pytest.mark.needs("batv")
@pytest.mark.parametrize("form", ["newest-key", "older-key", "reversed-form", "uppercase-hex"])
def test_bounce_with_a_valid_tag_reaches_the_mailbox_untagged(mail: MailSystem, form: str):
    signed = tag(ALICE)
    address = {"newest-key": signed,
               "older-key": tag(ALICE, key=OLDER),
               "reversed-form": prvs.reverse(signed),
               "uppercase-hex": prvs.with_signature(signed, prvs.TAG.match(signed).group(3).upper())}[form]
    token = mail.token("batv-bounce-" + form)
    r = bounce(mail, address, token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    assert r.rcpt_reply(address).code == 250, r.explain()
    copy = mail.delivered(token, r.queue_id, [ALICE])   # the sink's envelope: alice@, untagged
    assert copy.envelope_sender == ""
    mail.postfix.log.wait_for(rf"\b{r.queue_id}: to=<{re.escape(ALICE)}>, orig_to=<{re.escape(address)}>,")
    # Backstop was asked about the tagged recipient, and its batv check let it through.
    lines = decisions_for(mail, address)
    assert any("protocol_state=RCPT" in l for l in lines), "Backstop was not asked:\n" + "\n".join(lines)
    assert not any(" check=batv " in l for l in lines), "\n".join(lines)


@pytest.mark.needs("batv")
@pytest.mark.parametrize("forgery", ["bad_signature", "expired", "unknown_key"])
def test_bounce_with_a_forged_tag_is_refused_at_rcpt(mail: MailSystem, forgery: str):
    # In the roll-out phase too (verify_since lets only untagged bounces through).
    today = prvs.day_number()
    signed = tag(ALICE)
    good = prvs.TAG.match(signed).group(3)
    address = {
        "bad_signature": prvs.with_signature(signed, f"{int(good, 16) ^ 0x800001:06x}"),
        "expired": tag(ALICE, day=today - 400),       # made 400 days ago, signature right
        "unknown_key": prvs.sign(ALICE, "7", "a key Backstop never had", BATV_LIFETIME_DAYS),
    }[forgery]
    assert forgery != "unknown_key" or all(k != "7" for k, _ in BATV_KEYS)
    token, ip, mark = mail.token("batv-" + forgery), mail.next_ip(), mail.postfix.log.mark()
    r = bounce(mail, address, token=token, client_ip=ip)
    assert_refused_by_batv(mail, r, address, ip, mark, f"batv_{forgery}", token)


@pytest.mark.needs("batv")
def test_mail_with_a_sender_to_a_forged_tag_is_refused_at_rcpt(mail: MailSystem):
    # Not a bounce, but nothing would take a forged tag off: accepting it would mean
    # relaying it tagged, having it refused downstream and bouncing it (backscatter).
    signed = tag(ALICE)
    good = prvs.TAG.match(signed).group(3)
    address = prvs.with_signature(signed, f"{int(good, 16) ^ 0x000101:06x}")
    token, ip, mark = mail.token("batv-forged-sender"), mail.next_ip(), mail.postfix.log.mark()
    r = mail.send("batv", sender=f"{token}@pass.spf.test", recipients=[address], token=token, client_ip=ip)
    assert_refused_by_batv(mail, r, address, ip, mark, "batv_bad_signature", token)


@pytest.mark.needs("batv")
def test_untagged_bounce_is_refused_once_verify_since_has_passed(mail: MailSystem):
    r = bounce(mail, ALICE, quit_after="RCPT")
    assert r.rcpt_reply(ALICE).code == 250, "roll-out phase (verify_since ahead): accepted\n" + r.explain()
    with enforcing(mail):
        token, ip, mark = mail.token("batv-no-tag"), mail.next_ip(), mail.postfix.log.mark()
        r = bounce(mail, ALICE, token=token, client_ip=ip)
        assert_refused_by_batv(mail, r, ALICE, ip, mark, "batv_no_tag", token)


@pytest.mark.needs("batv")
def test_exempt_address_receives_untagged_bounces(mail: MailSystem):
    with enforcing(mail):
        r = bounce(mail, ALICE, quit_after="RCPT")
        assert r.rcpt_reply(ALICE).reply[-1].startswith("550 5.7.1 "), "not enforcing?\n" + r.explain()
        token = mail.token("batv-exempt")
        r = bounce(mail, POSTMASTER, token=token)
        assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
        mail.delivered(token, r.queue_id, [POSTMASTER])


@pytest.mark.needs("batv")
def test_valid_tag_for_a_mailbox_that_does_not_exist_is_refused_by_postfix(mail: MailSystem):
    # Refused at RCPT, not accepted and then bounced by the next hop (backscatter).
    address = tag("nosuch@example.test")
    token, ip, mark = mail.token("batv-nosuch"), mail.next_ip(), mail.postfix.log.mark()
    r = bounce(mail, address, token=token, client_ip=ip)
    assert r.exit_code == smtpclient.SWAKS_NO_RCPT_ACCEPTED, r.explain()
    reply = r.rcpt_reply(address).reply[-1]
    assert reply.startswith("550 5.1.1 ") and UNKNOWN_USER_IN_RELAY_TABLE in reply, r.explain()
    mail.postfix.log.wait_for(rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(ip)}\]: 550 5\.1\.1 "
                              rf"<{re.escape(address)}>: Recipient address rejected: {UNKNOWN_USER_IN_RELAY_TABLE};",
                              since=mark)
    time.sleep(0.3)
    assert not decisions_for(mail, address), "Postfix refused it; Backstop's policy service was asked anyway"
    assert not mail.sink.find(token)


# Postfix's own recipient validation from Backstop's table ------------------------------

@pytest.mark.needs("batv")
def test_postfix_validates_recipients_against_the_live_table(mail: MailSystem):
    newcomer = "dora@example.test"
    master_pid, backstop_pid = mail.postfix.master_pid(), mail.backstop.pid
    token, ip, mark = mail.token("relay-table"), mail.next_ip(), mail.postfix.log.mark()
    sender = f"{token}@pass.spf.test"
    r = mail.send("batv", sender=sender, recipients=[newcomer], client_ip=ip, token=token)
    assert r.exit_code == smtpclient.SWAKS_NO_RCPT_ACCEPTED, r.explain()
    reply = r.rcpt_reply(newcomer).reply[-1]
    assert reply.startswith("550 5.1.1 ") and UNKNOWN_USER_IN_RELAY_TABLE in reply, r.explain()
    mail.postfix.log.wait_for(rf"NOQUEUE: reject: RCPT from \S*\[{re.escape(ip)}\]: 550 5\.1\.1 "
                              rf"<{re.escape(newcomer)}>: Recipient address rejected: {UNKNOWN_USER_IN_RELAY_TABLE};",
                              since=mark)
    time.sleep(0.3)
    assert not decisions_for(mail, newcomer), "Postfix refused the recipient; the policy service was asked anyway"

    def accepted() -> bool:
        return mail.send("batv", recipients=[newcomer], quit_after="RCPT").rcpt_reply(newcomer).code == 250

    try:
        write_recipient_table(mail.table, KNOWN_RECIPIENTS + [newcomer])
        started = time.monotonic()
        wait_until(accepted, 20, interval=0.2, what=f"Postfix to accept {newcomer} after the table edit")
        print(f"[e2e] relay_recipient_maps followed the table edit after {time.monotonic() - started:.1f}s")
        token = mail.token("relay-table-newcomer")
        r = mail.send("batv", recipients=[newcomer], token=token)
        assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
        mail.delivered(token, r.queue_id, [newcomer])

        write_recipient_table(mail.table, KNOWN_RECIPIENTS)
        wait_until(lambda: not accepted(), 20, interval=0.2, what=f"Postfix to refuse {newcomer} again")
    finally:
        write_recipient_table(mail.table, KNOWN_RECIPIENTS)
    assert mail.postfix.master_pid() == master_pid and mail.backstop.pid == backstop_pid
    assert not mail.postfix.log.lines(mark, r"postfix/master\[\d+\]: reload")


@pytest.mark.needs("batv")
def test_socketmap_answers_as_postfix_sees_them(mail: MailSystem):
    # postmap -q is Postfix's own socketmap client, as cleanup and smtpd use it.
    def lookup(table: str, key: str) -> str | None:
        return mail.postfix.lookup(f"socketmap:inet:127.0.0.1:{mail.socketmap_port}:{table}", key)

    first_day = prvs.day_number()
    signed = lookup("batv-sign", ALICE)
    assert signed in tags_made_between(ALICE, first_day), signed
    for key in ('""',                               # the null sender, as cleanup asks for it
                "someone@elsewhere.test",           # not a signing domain
                BATV_EXCLUDED_SENDER,               # exclude_senders
                signed):                            # already tagged: cleanup asks again after a rewrite
        assert lookup("batv-sign", key) is None, f"batv-sign {key}"

    assert lookup("batv-strip", signed) == ALICE
    assert lookup("batv-strip", prvs.reverse(signed)) == ALICE
    # Expired in the last week: unwrapped all the same (its age was judged at RCPT; cleanup
    # may unwrap a message accepted on the tag's last day after midnight).
    assert lookup("batv-strip", tag(ALICE, day=prvs.day_number() - BATV_LIFETIME_DAYS - 2)) == ALICE
    good = prvs.TAG.match(signed).group(3)
    for key in (ALICE,                                              # not tagged
                prvs.with_signature(signed, f"{int(good, 16) ^ 1:06x}"),   # bad signature
                tag(ALICE, day=prvs.day_number() - 400),            # expired long ago
                tag("nosuch@example.test"),                         # valid tag, no such mailbox
                tag("nosuch@example.test", day=prvs.day_number() - 400)):  # expired, no such mailbox
        assert lookup("batv-strip", key) is None, f"batv-strip {key}"

    for key in (ALICE, POSTMASTER, signed):         # a tagged address is normalised like the check does
        assert lookup("recipients", key) is not None, f"recipients {key}"
    for key in ("nosuch@example.test", "someone@elsewhere.test"):
        assert lookup("recipients", key) is None, f"recipients {key}"


# key rotation (docs/batv.md) ----------------------------------------------------------

@pytest.mark.needs("batv")
def test_key_rotation_takes_effect_at_sighup(mail: MailSystem):
    rotated_in = ("3", "rotated in at sighup 3c5a")
    env = mail.backstop.env

    def signed_now() -> str | None:
        return mail.postfix.lookup(f"socketmap:inet:127.0.0.1:{mail.socketmap_port}:batv-sign", ALICE)

    def rcpt_reply(address: str) -> str:
        return bounce(mail, address, quit_after="RCPT").rcpt_reply(address).reply[-1]

    first_day = prvs.day_number()
    made_before = tag(ALICE)                 # by key 2, the newest until now
    oldest = tag(ALICE, key=OLDER)           # by key 1
    try:
        # A new line at the end signs from the reload on; the keys before it still verify.
        write_batv_keys(env, BATV_KEYS + [rotated_in])
        mail.backstop.reconfigure()
        assert signed_now() in tags_made_between(ALICE, first_day, key=rotated_in), signed_now()
        assert rcpt_reply(made_before).startswith("250 ") and rcpt_reply(oldest).startswith("250 ")
        # A deleted line verifies nothing from the next reload on.
        write_batv_keys(env, BATV_KEYS[1:] + [rotated_in])
        mail.backstop.reconfigure()
        ip, mark = mail.next_ip(), mail.postfix.log.mark()
        token = mail.token("batv-key-removed")
        r = bounce(mail, oldest, token=token, client_ip=ip)
        assert_refused_by_batv(mail, r, oldest, ip, mark, "batv_unknown_key", token)
        assert rcpt_reply(made_before).startswith("250 ")
    finally:
        write_batv_keys(env)
        mail.backstop.reconfigure()
    assert signed_now() in tags_made_between(ALICE, first_day), "the original keys are back in force"


# the command line ---------------------------------------------------------------------

@pytest.mark.needs("batv")
def test_batv_command_signs_and_verifies_like_the_server(mail: MailSystem):
    def batv(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(mail.backstop.binary), "batv", *args, "--config", str(mail.backstop.config_path)],
                              capture_output=True, text=True, timeout=60)

    first_day = today = prvs.day_number()
    p = batv("sign", ALICE)
    assert p.returncode == 0, p
    signed = p.stdout.strip()
    assert signed in tags_made_between(ALICE, first_day), f"backstop batv sign: {signed!r}"

    good = prvs.TAG.match(signed).group(3)
    valid = {
        "its own tag": signed,
        "older key": tag(ALICE, key=OLDER),
        "reversed form": prvs.reverse(signed),
        "uppercase hex": prvs.with_signature(signed, good.upper()),
        "address in other case": tag("Alice@Example.TEST"),
        f"made {BATV_LIFETIME_DAYS} days ago": tag(ALICE, day=today - BATV_LIFETIME_DAYS),
    }
    refused = {
        "no_tag": ALICE,
        "bad_signature": prvs.with_signature(signed, f"{int(good, 16) ^ 0x010000:06x}"),
        "expired": tag(ALICE, day=today - BATV_LIFETIME_DAYS - 1),
        "unknown_key": prvs.sign(ALICE, "7", "a key Backstop never had", BATV_LIFETIME_DAYS),
    }
    for what, address in valid.items():
        p = batv("verify", address)
        assert p.returncode == 0 and p.stdout.startswith("valid"), f"{what}: backstop batv verify {address}: {p}"
    for reason, address in refused.items():
        p = batv("verify", address)
        assert p.returncode == 1 and reason in p.stdout + p.stderr, f"backstop batv verify {address}: {p}"
        assert not p.stdout.startswith("valid"), p
    assert prvs.day_number() == today, "midnight UTC passed during the test; run it again"

    for address in ("someone@elsewhere.test", BATV_EXCLUDED_SENDER, signed):
        p = batv("sign", address)
        assert p.returncode == 1 and p.stderr.strip() and "prvs=" not in p.stdout, f"backstop batv sign {address}: {p}"


# when Backstop is down ----------------------------------------------------------------

@pytest.mark.needs("batv")
def test_stopped_backstop_defers_mail_that_needs_its_maps(mail: MailSystem):
    # Unlike the policy service (default_action=DUNNO), a lookup table has no fallback:
    # while Backstop is down every RCPT on the BATV wiring gets a temporary error, and
    # senders retry. Nothing is accepted unsigned or unchecked, nothing is bounced.
    master_pid = mail.postfix.master_pid()
    port = mail.socketmap_port
    mark = mail.postfix.log.mark()
    mail.backstop.stop()
    try:
        tries = [
            ("inbound", ALICE, mail.send("batv", recipients=[ALICE], quit_after="RCPT")),
            ("bounce", tag(ALICE), bounce(mail, tag(ALICE), quit_after="RCPT")),
            ("outbound", FRIEND, submit(mail, ALICE, quit_after="RCPT")),
        ]
    finally:
        mail.backstop.start()
    for what, rcpt, r in tries:
        reply = r.rcpt_reply(rcpt).reply[-1]
        assert reply.startswith("451 4.3.0 ") and "Temporary lookup failure" in reply, f"{what}: " + r.explain()
        mail.postfix.log.wait_for(rf"NOQUEUE: reject: RCPT from \S+: 451 4\.3\.0 <{re.escape(rcpt)}>:", since=mark)
    socketmap_down = (f"warning: connect to 127.0.0.1:{port}: Connection refused",
                      f"warning: table socketmap:inet:127.0.0.1:{port}:",
                      f"warning: socketmap:inet:127.0.0.1:{port}:")
    warnings = [l for l in mail.postfix.log.lines(mark) if "warning:" in l]
    assert warnings and all(any(w in l for w in socketmap_down) for l in warnings), "\n".join(warnings)
    mail.excused_log_lines.update(warnings)

    # Backstop is back: the same mail goes through, without a Postfix reload.
    first_day = prvs.day_number()
    token = mail.token("batv-back")
    r = mail.send("batv", recipients=[ALICE], token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    mail.delivered(token, r.queue_id, [ALICE])
    token = mail.token("batv-back-out")
    r = submit(mail, ALICE, token=token)
    assert r.exit_code == smtpclient.SWAKS_OK, r.explain()
    assert mail.delivered(token, r.queue_id, [FRIEND]).envelope_sender in tags_made_between(ALICE, first_day)
    assert mail.postfix.master_pid() == master_pid
    assert not mail.postfix.log.lines(mark, r"postfix/master\[\d+\]: reload")
