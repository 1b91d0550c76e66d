"""bcrypt (``$2b$``) in pure Python, for the password hashes of nats-server's users file.

The appliance runs on a bare ``python3`` (the standard library's ``crypt`` is
deprecated, gone in 3.13, and glibc may lack bcrypt), so this is bcrypt as
OpenBSD defines it (Provos and Mazieres, 1999): EksBlowfishSetup (the key
schedule, ``2**cost`` rounds of expanding the password and the salt into the
P-array and S-boxes), 64 encryptions of "OrpheanBeholderScryDoubt", bcrypt's
own base64. nats-server checks the hash with Go's ``golang.org/x/crypto/bcrypt``:
the password's bytes plus a terminating NUL, of which the first 72 count.

Blowfish's initial P-array and S-boxes are the hexadecimal digits of pi's
fraction (18 + 4 * 256 32-bit words, 8,336 hex digits): computed once, at first
use, from Chudnovsky's series on Python integers (about 20 ms), rather than
carried as a 4 KB table; the first and last words are checked against the
published ones (0x243F6A88 ... 0x3AC372E6).

Cost: a work factor only slows down guessing a password from its hash. The
passwords hashed here are random (a fleet host's 192 bits, the generated NATS
token's 384): guessing them is out of reach at any cost, and a higher one would
only slow enrollment down. So the lowest cost nats-server accepts is used: 4
(Go's ``bcrypt.MinCost``; a ``$2b$03$`` hash is refused). One hash then takes
0.1 to 0.2 s of CPU here (``python -m osapi.fleet.bcrypt [COST]`` measures it;
each step of cost doubles it).
"""

from __future__ import annotations

import hmac
import math
import os
import re

COST = 4  # Go's bcrypt.MinCost: nats-server refuses a lower one
MIN_COST, MAX_COST = 4, 31
MAX_KEY = 72  # bytes of the password (with its NUL) that count

_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
_MAGIC = b"OrpheanBeholderScryDoubt"
HASH_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_M = 0xFFFFFFFF

_initial: tuple[list[int], list[int]] | None = None


def pi_words(count: int) -> list[int]:
    """The first ``count`` 32-bit words of pi's fraction (0x243F6A88, 0x85A308D3, ...).

    Chudnovsky's series summed by binary splitting on Python integers (each term adds
    about 47 bits; 1,042 words take some 20 ms), 64 guard bits below the last word.
    """
    c3_24 = 640320 ** 3 // 24

    def split(a: int, b: int) -> tuple[int, int, int]:
        if b - a == 1:
            if a == 0:
                p = q = 1
            else:
                p = (6 * a - 5) * (2 * a - 1) * (6 * a - 1)
                q = a * a * a * c3_24
            t = p * (13591409 + 545140134 * a)
            return p, q, -t if a & 1 else t
        m = (a + b) // 2
        p1, q1, t1 = split(a, m)
        p2, q2, t2 = split(m, b)
        return p1 * p2, q1 * q2, q2 * t1 + p1 * t2

    bits = 32 * count
    precision = bits + 64
    _, q, t = split(0, precision // 47 + 2)
    pi = q * 426880 * math.isqrt(10005 << (2 * precision)) // t  # pi * 2**precision
    fraction = (pi - (3 << precision)) >> 64
    return [(fraction >> (bits - 32 * (i + 1))) & _M for i in range(count)]


def _boxes() -> tuple[list[int], list[list[int]]]:
    """Blowfish's initial P-array (18 words) and four S-boxes (256 words each): pi's hex digits."""
    global _initial
    if _initial is None:
        words = pi_words(18 + 4 * 256)
        if words[:4] != [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344] or words[-1] != 0x3AC372E6:
            raise AssertionError("the digits of pi came out wrong")
        _initial = (words[:18], [words[18 + 256 * i:18 + 256 * (i + 1)] for i in range(4)])
    return list(_initial[0]), [list(box) for box in _initial[1]]


def _encrypt(P: list[int], S: list[list[int]], left: int, right: int) -> tuple[int, int]:
    """One Blowfish block. F's sums are taken modulo 2**32 once at its end: carries only move upwards, so
    the low 32 bits come out the same."""
    S0, S1, S2, S3 = S
    for i in range(0, 16, 2):
        left ^= P[i]
        right ^= (((S0[left >> 24] + S1[(left >> 16) & 0xFF]) ^ S2[(left >> 8) & 0xFF]) + S3[left & 0xFF]) & _M
        right ^= P[i + 1]
        left ^= (((S0[right >> 24] + S1[(right >> 16) & 0xFF]) ^ S2[(right >> 8) & 0xFF]) + S3[right & 0xFF]) & _M
    return right ^ P[17], left ^ P[16]


def _words(data: bytes, count: int) -> list[int]:
    """``count`` big-endian words read from ``data`` over and over (Blowfish's key and salt cycling)."""
    need = 4 * count
    stream = (data * (need // len(data) + 1))[:need]
    return [int.from_bytes(stream[i:i + 4], "big") for i in range(0, need, 4)]


def _expand(P: list[int], S: list[list[int]], key: list[int], salt: list[int] | None) -> None:
    """Blowfish's key schedule with a key of 18 words and, when given, a salt of 4 words (bcrypt's ExpandKey)."""
    for i in range(18):
        P[i] ^= key[i]
    left = right = 0
    n = 0
    for box in [P, *S]:
        for i in range(0, len(box), 2):
            if salt is not None:
                left ^= salt[n & 3]
                right ^= salt[(n + 1) & 3]
                n += 2
            left, right = _encrypt(P, S, left, right)
            box[i], box[i + 1] = left, right


def _b64encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data), 3):
        chunk = data[i:i + 3]
        n = int.from_bytes(chunk + b"\0" * (3 - len(chunk)), "big")
        chars = [_ALPHABET[(n >> s) & 63] for s in (18, 12, 6, 0)]
        out.extend(chars[:len(chunk) + 1])
    return "".join(out)


def _b64decode(text: str, size: int) -> bytes:
    out = bytearray()
    for i in range(0, len(text), 4):
        chunk = text[i:i + 4]
        n = 0
        for c in chunk.ljust(4, "."):
            n = (n << 6) | _INDEX[c]
        out.extend(n.to_bytes(3, "big")[:len(chunk) - 1])
    return bytes(out[:size])


def raw(password: bytes, salt: bytes, cost: int) -> bytes:
    """bcrypt's 23 output bytes for a password (bytes, without its NUL), a 16-byte salt and a cost."""
    if not MIN_COST <= cost <= MAX_COST:
        raise ValueError(f"bcrypt cost must be {MIN_COST}..{MAX_COST}, got {cost}")
    if len(salt) != 16:
        raise ValueError("a bcrypt salt is 16 bytes")
    key_bytes = (bytes(password) + b"\0")[:MAX_KEY]
    key, salt_key, salt_words = _words(key_bytes, 18), _words(salt, 18), _words(salt, 4)
    P, S = _boxes()
    _expand(P, S, key, salt_words)
    for _ in range(1 << cost):
        _expand(P, S, key, None)
        _expand(P, S, salt_key, None)
    text = _words(_MAGIC, 6)
    for i in range(0, 6, 2):
        left, right = text[i], text[i + 1]
        for _ in range(64):
            left, right = _encrypt(P, S, left, right)
        text[i], text[i + 1] = left, right
    return b"".join(w.to_bytes(4, "big") for w in text)[:23]


def _bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def hashpw(password: str | bytes, cost: int = COST, salt: bytes | None = None, prefix: str = "2b") -> str:
    """The bcrypt hash ``$2b$CC$<22 salt><31 hash>`` of ``password`` (UTF-8 when a str); a random salt by default."""
    if prefix not in ("2a", "2b", "2y"):
        raise ValueError(f"unknown bcrypt variant {prefix!r}")
    salt = os.urandom(16) if salt is None else salt
    digest = raw(_bytes(password), salt, cost)
    return f"${prefix}${cost:02d}${_b64encode(salt)}{_b64encode(digest)}"


def checkpw(password: str | bytes, hashed: str) -> bool:
    """Whether ``hashed`` (a bcrypt hash) is the hash of ``password``; False for anything not a bcrypt hash."""
    if not isinstance(hashed, str) or not HASH_RE.fullmatch(hashed):
        return False
    prefix, cost, rest = hashed[1:3], int(hashed[4:6]), hashed[7:]
    salt = _b64decode(rest[:22], 16)
    return hmac.compare_digest(hashpw(password, cost, salt, prefix)[7:], rest)


def is_hash(value) -> bool:
    """A well-formed bcrypt hash (``$2a$``/``$2b$``/``$2y$``, cost 04..31, 53 characters of salt and hash)."""
    return isinstance(value, str) and HASH_RE.fullmatch(value) is not None


if __name__ == "__main__":  # python -m osapi.fleet.bcrypt [COST]: the time of one hash
    import sys
    import time

    _boxes()
    cost = int(sys.argv[1]) if len(sys.argv) > 1 else COST
    started = time.perf_counter()
    hashpw(os.urandom(24).hex(), cost)
    print(f"one bcrypt hash at cost {cost}: {time.perf_counter() - started:.3f} s")
