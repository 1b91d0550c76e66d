"""osapi's pure-Python bcrypt (osapi/fleet/bcrypt.py) against published test vectors.

The vectors are OpenBSD's and Openwall crypt_blowfish's (also in passlib's and
jBCrypt's test suites); nats-server accepting a hash made here is
tests/integration/test_fleet_permissions.py.
"""

from __future__ import annotations

import pytest

from osapi.fleet import bcrypt

VECTORS = [
    (b"U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
    (b"U*U*", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"),
    (b"U*U*U", "$2a$05$XXXXXXXXXXXXXXXXXXXXXOAcXxm9kjPGEMsLznoKqmqw7tc8WCx4a"),
    (b"", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy"),  # the empty password
    # 72 bytes count, the rest is ignored
    (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789chars after 72 are ignored",
     "$2a$05$abcdefghijklmnopqrstuu5s2v8.iXieOjg/.AySBTTZIIVFJeBui"),
    (b"\xa3", "$2y$05$/OK.fbVrR/bpIqNJ5ianF.Sa7shbm4.OzKpvFnX1pQLmQW96oUlCq"),  # an 8-bit byte
    (b"\xff\xa3345", "$2y$05$/OK.fbVrR/bpIqNJ5ianF.nRht2l/HRhr6zmCp9vYUvvsqynflf9e"),
]


def salt_of(hashed: str) -> bytes:
    return bcrypt._b64decode(hashed[7:29], 16)


@pytest.mark.parametrize("password, hashed", VECTORS)
def test_published_vectors(password, hashed):
    assert bcrypt.hashpw(password, int(hashed[4:6]), salt_of(hashed), hashed[1:3]) == hashed


def test_checkpw():
    password, hashed = VECTORS[0]
    assert bcrypt.checkpw(password, hashed) and bcrypt.checkpw(password.decode(), hashed)
    assert not bcrypt.checkpw(b"U*V", hashed)


def test_the_72_byte_cut():
    hashed = VECTORS[4][1]
    password = VECTORS[4][0]
    assert bcrypt.checkpw(password[:72] + b"anything else", hashed)
    assert not bcrypt.checkpw(password[:71], hashed)


def test_the_2b_prefix_is_the_same_algorithm():
    password, hashed = VECTORS[0]
    assert bcrypt.checkpw(password, "$2b$" + hashed[4:])


def test_blowfish_tables_are_pi():
    assert bcrypt.pi_words(4) == [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]
    p_array, s_boxes = bcrypt._boxes()
    assert p_array[17] == 0x8979FB1B and s_boxes[0][0] == 0xD1310BA6 and s_boxes[3][255] == 0x3AC372E6


def test_a_fresh_hash_has_its_own_salt_the_lowest_cost_and_checks():
    first, second = bcrypt.hashpw("pässwörd€"), bcrypt.hashpw("pässwörd€")
    assert first != second and first.startswith("$2b$04$") and bcrypt.is_hash(first)
    assert bcrypt.checkpw("pässwörd€".encode(), first)  # a str is its UTF-8 bytes
    assert not bcrypt.checkpw("pässwörd", first)


@pytest.mark.parametrize("value", [
    None, 5, "", "U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOe",  # one character short
    "$2a$03$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",  # below nats-server's minimum cost
    "$2x$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",  # crypt_blowfish's buggy variant
    "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOe\"",
    "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOe\n",
    "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvy}W",
])
def test_anything_but_a_bcrypt_hash_is_not_one(value):
    assert not bcrypt.is_hash(value)
    assert bcrypt.checkpw(b"U*U", value) is False


@pytest.mark.parametrize("kwargs", [{"cost": 3}, {"cost": 32}, {"salt": b"short"}, {"prefix": "2x"}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        bcrypt.hashpw("pw", **kwargs)
