# BATV "prvs" tags (draft-levine-smtp-batv-01) computed here, in a few lines of Python's
# hmac and hashlib, so that the end-to-end tests compare Backstop's tags with an
# implementation that shares no code with it. Only what the tests need: making tags
# (valid, expired, with an unknown key, with a wrong signature) and taking them apart.
#
#   prvs=KDDDSSSSSS=local@domain
#   K       key number, one digit, names a line of the key file
#   DDD     the day the tag expires: (days since 1970-01-01 UTC + lifetime) mod 1000
#   SSSSSS  the first 3 bytes of HMAC-SHA1(secret, lowercase("KDDD" + local@domain)), hex

from __future__ import annotations

import hashlib
import hmac
import re
import time

SECONDS_PER_DAY = 86400
TAG = re.compile(r"^prvs=([0-9])([0-9]{3})([0-9A-Fa-f]{6})=(.+@[^@]+)$")


def day_number(at: float | None = None) -> int:
    """Days since 1970-01-01 UTC at `at` (default: now)."""
    return int((time.time() if at is None else at) // SECONDS_PER_DAY)


def expiry_code(day: int, lifetime_days: int) -> str:
    """DDD of a tag made on `day`."""
    return f"{(day + lifetime_days) % 1000:03d}"


def signature(secret: str, key_id: str, ddd: str, address: str) -> str:
    message = (key_id + ddd + address).lower().encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha1).digest()[:3].hex()


def sign(address: str, key_id: str, secret: str, lifetime_days: int, day: int | None = None) -> str:
    """The tagged form of address, as made on `day` (default: today)."""
    ddd = expiry_code(day_number() if day is None else day, lifetime_days)
    return f"prvs={key_id}{ddd}{signature(secret, key_id, ddd, address)}={address}"


def reverse(tagged: str) -> str:
    """prvs=KDDDSSSSSS=local@domain -> prvs=local=KDDDSSSSSS@domain (the other order the
    draft's predecessors used, which verifiers accept too)."""
    m = TAG.match(tagged)
    assert m, f"not a prvs tag: {tagged}"
    local, domain = m.group(4).rsplit("@", 1)
    return f"prvs={local}={m.group(1)}{m.group(2)}{m.group(3)}@{domain}"


def with_signature(tagged: str, hex6: str) -> str:
    """The same tag with its signature replaced."""
    m = TAG.match(tagged)
    assert m, f"not a prvs tag: {tagged}"
    return f"prvs={m.group(1)}{m.group(2)}{hex6}={m.group(4)}"

