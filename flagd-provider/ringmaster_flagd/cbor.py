"""The deterministic CBOR bytes flagd's `fractional` (bucketing v3) hashes, for every JSON value.

flagd hashes `cbor2.dumps(normalize_numbers(value), canonical=True)`: whole floats in
[-2^63, 2^64-1] become integers first (so 1.0, 1 and -0.0/0 bucket alike), other floats take the
shortest of float16/32/64 that holds them exactly, map keys are sorted by the length and then the
bytes of their encoding, and integers beyond 64 bits are bignums (tags 2 and 3). A general encoder
costs several microseconds per call; strings, the usual bucketing value, take a header and their
UTF-8 bytes here. Values CBOR cannot carry this way (lone surrogates, naive datetimes, objects of
other types) raise `UnencodableError`, on which `fractional` yields null, as flagd's does.
"""

from __future__ import annotations

import math
import struct
from datetime import datetime
from typing import Any

_FLOAT_TO_INT_MIN = -(2**63)
_FLOAT_TO_INT_MAX = 2**64 - 1
_BIGNUM_LIMIT = 2**64
_NAN = b"\xf9\x7e\x00"
_POSITIVE_INFINITY = b"\xf9\x7c\x00"
_NEGATIVE_INFINITY = b"\xf9\xfc\x00"


class UnencodableError(ValueError):
    """The value has no deterministic CBOR encoding flagd would hash."""


def _head(major_type: int, length: int) -> bytes:
    major = major_type << 5
    if length < 24:
        return bytes((major | length,))
    if length < 0x100:
        return bytes((major | 24, length))
    if length < 0x10000:
        return bytes((major | 25,)) + length.to_bytes(2, "big")
    if length < 0x100000000:
        return bytes((major | 26,)) + length.to_bytes(4, "big")
    return bytes((major | 27,)) + length.to_bytes(8, "big")


SHORT_TEXT_HEADERS = tuple(bytes((0x60 | length,)) for length in range(24))


def text_header(byte_length: int) -> bytes:
    """The head of a text string of `byte_length` UTF-8 bytes."""
    return SHORT_TEXT_HEADERS[byte_length] if byte_length < 24 else _head(3, byte_length)


def encode_text(value: str) -> bytes:
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UnencodableError(f"text with a lone surrogate cannot be encoded: {error}") from None
    return text_header(len(encoded)) + encoded


def _encode_int(value: int) -> bytes:
    if value >= _BIGNUM_LIMIT or value < -_BIGNUM_LIMIT:
        tag, magnitude = (0xC2, value) if value >= 0 else (0xC3, -value - 1)
        payload = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
        return bytes((tag,)) + _head(2, len(payload)) + payload
    if value >= 0:
        return _head(0, value)
    return _head(1, -(value + 1))


def _encode_float(value: float) -> bytes:
    if math.isnan(value):
        return _NAN
    if math.isinf(value):
        return _POSITIVE_INFINITY if value > 0 else _NEGATIVE_INFINITY
    encoded = struct.pack(">Bd", 0xFB, value)
    # The narrower forms are tried in turn and kept only while they hold the value exactly.
    for layout, marker in ((">Bf", 0xFA), (">Be", 0xF9)):
        try:
            narrower = struct.pack(layout, marker, value)
        except OverflowError:
            break
        if struct.unpack(layout, narrower)[1] != value:
            break
        encoded = narrower
    return encoded


def _encode_number(value: float) -> bytes:
    if value.is_integer() and _FLOAT_TO_INT_MIN <= value <= _FLOAT_TO_INT_MAX:
        return _encode_int(int(value))
    return _encode_float(value)


def encode(value: Any, _open_containers: frozenset[int] = frozenset()) -> bytes:
    """Deterministic CBOR of a JSON value (plus tuples and timezone-aware datetimes, as cbor2 does)."""
    if type(value) is str:
        return encode_text(value)
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return _encode_int(value)
    if isinstance(value, float):
        return _encode_number(value)
    if isinstance(value, str):
        return encode_text(value)
    if isinstance(value, list | tuple | dict):
        if id(value) in _open_containers:
            raise UnencodableError("a value that contains itself cannot be encoded")
        inside = _open_containers | {id(value)}
        if isinstance(value, dict):
            entries = sorted((_sortable(encode(key, inside)), encode(item, inside)) for key, item in value.items())
            return _head(5, len(entries)) + b"".join(key[1] + item for key, item in entries)
        return _head(4, len(value)) + b"".join(encode(item, inside) for item in value)
    if isinstance(value, datetime):
        if not value.tzinfo:
            raise UnencodableError(f"naive datetime {value!r} has no CBOR encoding without a timezone")
        return b"\xc0" + encode_text(value.isoformat().replace("+00:00", "Z"))
    raise UnencodableError(f"values of type {type(value).__name__} are not part of flagd's bucketing")


def _sortable(encoded_key: bytes) -> tuple[int, bytes]:
    return len(encoded_key), encoded_key
