#!/usr/bin/env python3
"""A tiny policy client for bench/run.sh: waits for a server's first answer.

    first_answer.py wait PORT [--timeout S]
        polls 127.0.0.1:PORT until one request is answered; exit 0, or 1 on timeout.
    first_answer.py start PORT --log FILE --pidfile FILE -- COMMAND...
        starts COMMAND (stdout and stderr to FILE), polls until its first answer and prints
        the seconds from exec to that answer; the server keeps running (its PID goes to
        --pidfile), so the caller can read its memory and stop it.

It is a measuring tool, not part of the product: one minimal RCPT request, one reply
"action=...\\n\\n" expected; anything else counts as "not ready yet". Loopback only.
"""

import argparse
import socket
import subprocess
import sys
import time

REQUEST = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"
           b"sender=first@answer.example\nrecipient=user1@dom1.bench.test\ninstance=1.1.1\n\n")


def answered(port):
    """True when the server at 127.0.0.1:port answers one request now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(REQUEST)
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            return reply.startswith(b"action=")
    except OSError:
        return False


def poll(port, timeout, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if answered(port):
            return True
        time.sleep(0.002)
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["wait", "start"])
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--log")
    parser.add_argument("--pidfile")
    argv = sys.argv[1:]
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.mode == "wait":
        sys.exit(0 if poll(args.port, args.timeout) else 1)
    if not command or not args.log or not args.pidfile:
        parser.error("start needs --log, --pidfile and -- COMMAND")
    log = open(args.log, "ab")
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    with open(args.pidfile, "w") as f:
        f.write(str(process.pid))
    if not poll(args.port, args.timeout, process):
        print("no answer", file=sys.stderr)
        sys.exit(1)
    print("%.3f" % (time.monotonic() - started))


if __name__ == "__main__":
    main()
