# Sending test mail with swaks, the way a remote MTA would, and reading what the server
# answered to each command. swaks is the client on purpose (a real, independent SMTP
# implementation); this file only builds its command line and splits its transcript.

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"

# swaks exit codes (swaks(1), EXIT CODES)
SWAKS_OK = 0
SWAKS_MAIL_FAILED = 23
SWAKS_NO_RCPT_ACCEPTED = 24
SWAKS_DATA_FAILED = 25
SWAKS_MESSAGE_NOT_ACCEPTED = 26


@dataclass
class Exchange:
    command: str              # e.g. "RCPT TO:<a@example.test>", or "." for the end of data
    reply: list[str]          # the reply lines, e.g. ["550 5.1.1 <a@example.test>: ..."]

    @property
    def code(self) -> int:
        return int(self.reply[-1][:3]) if self.reply and self.reply[-1][:3].isdigit() else 0

    @property
    def text(self) -> str:
        return "\n".join(self.reply)


@dataclass
class SmtpResult:
    exit_code: int
    transcript: str
    exchanges: list[Exchange]

    def replies_to(self, verb: str) -> list[Exchange]:
        """Exchanges whose command starts with verb ("RCPT", "MAIL", "DATA", ".")."""
        return [e for e in self.exchanges if e.command.upper().startswith(verb)]

    def rcpt_reply(self, address: str) -> Exchange:
        for e in self.replies_to("RCPT TO:"):
            if f"<{address}>" in e.command:
                return e
        raise AssertionError(f"no RCPT TO:<{address}> in transcript:\n{self.transcript}")

    @property
    def end_of_data(self) -> Exchange | None:
        found = self.replies_to(".")
        return found[-1] if found else None

    @property
    def queue_id(self) -> str | None:
        eod = self.end_of_data
        if eod is None:
            return None
        m = re.search(r"queued as ([0-9A-Za-z]+)", eod.text)
        return m.group(1) if m else None

    def explain(self) -> str:
        return f"swaks exit code {self.exit_code}; transcript:\n{self.transcript}"


def parse_transcript(transcript: str) -> list[Exchange]:
    """swaks prints ' -> ' / ' ~> ' for what it sent, '<-  ' for good replies and '<** ' for
    error replies; message content lines are also ' -> ', so only the line after the last
    content line ('.') and SMTP verbs are taken as commands."""
    exchanges: list[Exchange] = []
    current: Exchange | None = None
    in_data = False
    for line in transcript.splitlines():
        if line.startswith((" -> ", " ~> ")):
            sent = line[4:]
            if in_data:
                if sent == ".":
                    in_data = False
                    current = Exchange(".", [])
                    exchanges.append(current)
                continue
            current = Exchange(sent, [])
            exchanges.append(current)
        elif line.startswith(("<-  ", "<** ", "<~  ", "<~* ")):
            reply = line[4:]
            if current is not None:
                current.reply.append(reply)
                if current.command.upper() == "DATA" and reply.startswith("354"):
                    in_data = True
    return exchanges


def send(port: int, *, sender: str, recipients: list[str], client_ip: str = "127.0.0.1",
         helo: str = "client.pass.spf.test", token: str = "", quit_after: str | None = None,
         xclient_addr: str | None = None, timeout: int = 30) -> SmtpResult:
    """One SMTP session to 127.0.0.1:port from client_ip. sender "" sends MAIL FROM:<>.
    token goes into an X-Backstop-Test header so the delivered copy can be found.
    xclient_addr: Postfix's XCLIENT makes smtpd (and so Backstop) see this client address
    instead of the loopback one the connection really comes from."""
    args = [SWAKS, "--server", "127.0.0.1", "--port", str(port),
            "--local-interface", client_ip, "--helo", helo,
            "--from", sender if sender else "<>",
            "--to", ",".join(recipients),
            "--timeout", str(timeout)]
    if token:
        args += ["--header", f"X-Backstop-Test: {token}"]
    if quit_after:
        args += ["--quit-after", quit_after]
    if xclient_addr:
        args += ["--xclient-addr", xclient_addr]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 30)
    transcript = p.stdout + p.stderr
    return SmtpResult(p.returncode, transcript, parse_transcript(transcript))


def send_bdat(port: int, *, sender: str, recipients: list[str], client_ip: str,
              helo: str = "client.pass.spf.test", token: str = "", timeout: float = 30) -> SmtpResult:
    """One transaction with BDAT (RFC 3030 CHUNKING) instead of DATA, as large senders
    (Exchange, Gmail) do. swaks cannot send BDAT, hence this small client. With BDAT,
    Postfix evaluates no smtpd_data_restrictions: only END-OF-MESSAGE sees the message."""
    body = (f"From: <{sender or 'MAILER-DAEMON@client.pass.spf.test'}>\r\nTo: <{recipients[0]}>\r\n"
            f"Subject: BDAT test\r\nX-Backstop-Test: {token}\r\n\r\nsent with BDAT\r\n").encode()
    exchanges: list[Exchange] = []
    log: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(client_ip, 0)) as s:
        f = s.makefile("rb")

        def reply(command: str):
            lines = []
            while True:
                line = f.readline().decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    raise ConnectionError(f"connection closed after {command!r}")
                lines.append(line)
                log.append("<-  " + line)
                if len(line) < 4 or line[3] != "-":
                    break
            exchanges.append(Exchange(command, lines))
            return exchanges[-1]

        def command(text: str, payload: bytes = b""):
            log.append(" -> " + text)
            s.sendall(text.encode() + b"\r\n" + payload)
            return reply(text)

        reply("(greeting)")
        ehlo = command(f"EHLO {helo}")
        if not any("CHUNKING" in l for l in ehlo.reply):
            raise AssertionError("server does not announce CHUNKING:\n" + ehlo.text)
        ok = command(f"MAIL FROM:<{sender}>").code == 250
        accepted = [r for r in recipients if command(f"RCPT TO:<{r}>").code == 250]
        if ok and accepted:
            exchanges_before = len(exchanges)
            bdat = command(f"BDAT {len(body)} LAST", body)
            # Report the end of the message as "." like the DATA path does.
            exchanges[exchanges_before] = Exchange(".", bdat.reply)
        command("QUIT")
    code = 0 if exchanges and exchanges[-2].command == "." and exchanges[-2].code == 250 else 26
    return SmtpResult(code, "\n".join(log), exchanges)
