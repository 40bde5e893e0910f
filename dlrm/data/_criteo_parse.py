"""Criteo text -> numpy, vectorised over the bytes (no Python object per line or field).

Private: :mod:`dlrm.data.criteo` is the public interface. The format and the rules a line must
follow are described there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
MAX_REPORTED_LINES = 100
REASONS = ("wrong field count", "bad label", "non-integer dense", "non-hex categorical")
_MAX_DENSE_DIGITS = 18  # fits int64

# word masks: _PREFIX64[L] keeps the first (lowest) L bytes of a little-endian word, _SUFFIX64[L]
# the last (highest) L; L = 9 (a field too long) keeps all 8
_PREFIX64 = np.array([(1 << (8 * L)) - 1 for L in range(9)] + [(1 << 64) - 1], dtype=np.uint64)
_SUFFIX64 = np.array([((1 << 64) - 1) ^ ((1 << (8 * (8 - L))) - 1) for L in range(9)], dtype=np.uint64)
_C76 = np.uint64(0x7676767676767676)
_C80 = np.uint64(0x8080808080808080)
_M1 = np.uint64(0x000F000F000F000F)
_M2 = np.uint64(0x000000FF000000FF)
_M3 = np.uint64(0xFFFF)


def criteo_feature_names() -> Tuple[List[str], List[str]]:
    """(dense names ``I1..I13``, categorical names ``C1..C26``), Criteo's own column names."""
    return [f"I{i}" for i in range(1, NUM_DENSE + 1)], [f"C{i}" for i in range(1, NUM_SPARSE + 1)]


def read_line_chunks(path: Path, chunk_bytes: int, start: int = 0, end: Optional[int] = None) -> Iterator[bytes]:
    """Yield buffers of whole lines (joined by ``\\n``, no final newline, CRLF read as LF) from
    bytes ``[start, end)`` of ``path``; ``start`` must be 0 or just after a newline."""
    carry = b""
    with open(path, "rb") as f:
        f.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            buf = f.read(chunk_bytes if left is None else min(chunk_bytes, left))
            if not buf:
                break
            if left is not None:
                left -= len(buf)
            data = carry + buf
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            yield _lf(data[:cut])
    if carry:
        yield _lf(carry)


def _lf(buf: bytes) -> bytes:
    if b"\r" in buf:  # tolerate CRLF line ends
        buf = buf.replace(b"\r\n", b"\n")
        if buf.endswith(b"\r"):
            buf = buf[:-1]
    return buf


def parse_buffer(buf: bytes, max_ind_range: Optional[int]):
    """Parse and validate the lines of ``buf`` (whole lines joined by ``\\n``, no final newline).

    Everything is vectorised over the bytes: no Python object per line or field.

    Returns:
        (line_start int64 (n,), line_end int64 (n,), reason int8 (n,), labels float32 (m,),
        dense float32 (m, 13) after log(1 + x), categorical values int64 (m, 26) after the
        optional modulo), where reason is 0 for a good line else 1 + index into REASONS and the
        last three hold the m good lines in order.
    """
    a = np.frombuffer(buf + b"\n", dtype=np.uint8)
    is_nl = a == 10
    line_end = np.flatnonzero(is_nl)
    n = len(line_end)
    line_start = np.empty(n, dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = line_end[:-1] + 1
    delims = np.flatnonzero(is_nl | (a == 9))
    nl_at = np.flatnonzero(is_nl[delims])  # index in delims of each line's newline
    first_delim = np.empty(n, dtype=np.int64)  # index in delims of each line's first delimiter
    first_delim[0] = 0
    first_delim[1:] = nl_at[:-1] + 1
    fields = nl_at - first_delim + 1
    reason = np.zeros(n, dtype=np.int8)
    reason[fields != NUM_FIELDS] = 1
    ok_idx = np.flatnonzero(reason == 0)
    m = len(ok_idx)
    empty = (line_start, line_end, reason, np.zeros(0, np.float32), np.zeros((0, NUM_DENSE), np.float32),
             np.zeros((0, NUM_SPARSE), np.int64))
    if m == 0:
        return empty
    ends = delims[first_delim[ok_idx, None] + np.arange(NUM_FIELDS)]  # (m, 40) end of each field
    starts = np.empty_like(ends)
    starts[:, 0] = line_start[ok_idx]
    starts[:, 1:] = ends[:, :-1] + 1
    lengths = ends - starts

    lab_len = lengths[:, 0]
    lab_char = a[starts[:, 0]]
    bad_label = (lab_len != 1) | ((lab_char != 48) & (lab_char != 49))

    # Fields are decoded with 64-bit word operations: w64[i] is the 8 bytes from a_pad[i] as a
    # little-endian uint64 (an unaligned, overlapping view: one index per field, not per byte).
    c0, d0 = 1 + NUM_DENSE, 1
    pad = 24
    a_pad = np.concatenate([np.zeros(pad, np.uint8), a, np.zeros(pad, np.uint8)])
    w64 = np.ndarray(shape=(len(a_pad) - 7,), dtype="<u8", buffer=a_pad, strides=(1,))

    # categorical: 8 bytes from the field's start; bytes past its end masked off
    clen = np.minimum(lengths[:, c0:], 9)
    inside = _PREFIX64[clen]
    raw = w64[starts[:, c0:] + pad] & inside
    b = raw.view(np.uint8).reshape(m, NUM_SPARSE, 8)
    folded = b | np.uint8(0x20)  # 'A'-'F' -> 'a'-'f'
    valid = ((b - np.uint8(48)) < 10) | ((folded - np.uint8(97)) < 6)
    bad_cat = (((valid.view("<u8")[:, :, 0] * np.uint64(255)) ^ inside) & inside != 0).any(axis=1)
    bad_cat |= (clen > 8).any(axis=1)
    x = ((b & np.uint8(15)) + np.uint8(9) * (b >> np.uint8(6))).view("<u8")[:, :, 0]  # digit values

    # dense: a right-aligned window of 8, 16 or 24 bytes ending at the field's end, digit values
    # ('0' -> 0); only the field's digits are kept (a leading '-' is dropped: negative -> 0)
    dlen = lengths[:, d0:c0]
    dmax = int(min(dlen.max(), _MAX_DENSE_DIGITS + 1))
    nw = max(1, -(-dmax // 8))
    dw = 8 * nw
    isminus0 = (a_pad[starts[:, d0:c0] + pad] == 45) & (dlen > 0)
    ndig = np.minimum(dlen - isminus0, dw)  # digits kept from the right
    first = ends[:, d0:c0, None] + (pad - dw) + 8 * np.arange(nw)
    words = w64[first]  # (m, 13, nw)
    words = (words.view(np.uint8) - np.uint8(48)).view("<u8")
    kept = np.clip(ndig[:, :, None] - (dw - 8 * (np.arange(nw) + 1)), 0, 8)
    words &= _SUFFIX64[kept]
    with np.errstate(over="ignore"):
        bad_dense = (((words + _C76) | words) & _C80 != 0).any(axis=(1, 2))  # a byte > 9: not a digit
    bad_dense |= ((dlen > _MAX_DENSE_DIGITS + 1) | (isminus0 & (dlen == 1))
                  | (~isminus0 & (dlen > _MAX_DENSE_DIGITS))).any(axis=1)

    sub = np.zeros(m, dtype=np.int8)
    sub[bad_cat] = 4
    sub[bad_dense] = 3
    sub[bad_label] = 2
    reason[ok_idx] = sub
    keep = sub == 0
    if not keep.all():
        x, clen, words, isminus0, lab_char = x[keep], clen[keep], words[keep], isminus0[keep], lab_char[keep]

    dval = np.zeros(words.shape[:2], dtype=np.uint64)
    for j in range(nw):
        dval = dval * np.uint64(100_000_000) + _eight_digits(words[:, :, j])
    dval[isminus0] = 0
    dense = np.log(dval.astype(np.float64) + 1.0).astype(np.float32)

    # categorical value: pack the 8 left-aligned nibbles (byte k = k-th digit) into one 32-bit
    # number, then right-align by the field's length
    y = ((x & _M1) << np.uint64(4)) | ((x >> np.uint64(8)) & _M1)  # 16-bit lane i: digits 2i, 2i+1
    z = ((y & _M2) << np.uint64(8)) | ((y >> np.uint64(16)) & _M2)  # 32-bit lane j: digits 4j..4j+3
    v = ((z & _M3) << np.uint64(16)) | ((z >> np.uint64(32)) & _M3)
    cval = (v >> (np.uint64(4) * (np.uint64(8) - clen.astype(np.uint64)))).astype(np.int64)
    if max_ind_range is not None:
        cval %= max_ind_range
    labels = (lab_char == 49).astype(np.float32)
    return line_start, line_end, reason, labels, dense, cval


def _eight_digits(w: np.ndarray) -> np.ndarray:
    """The number written by 8 digit values (0..9), most significant in the lowest byte.

    The multiply-and-shift parse of eight digits in a 64-bit word (as in Lemire's fast number
    parsing): pairs, then the four pairs in one multiply pair.
    """
    with np.errstate(over="ignore"):
        w = w * np.uint64(10) + (w >> np.uint64(8))  # byte 2i: 10 d_2i + d_2i+1
        lo = w & _M2
        hi = (w >> np.uint64(16)) & _M2
        return (lo * np.uint64(100 + (1_000_000 << 32)) + hi * np.uint64(1 + (10_000 << 32))) >> np.uint64(32)
