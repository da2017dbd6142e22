#!/usr/bin/env python3
"""A ringkv client written from PROTOCOL.md, using the Python standard library only.

As a library:

    from ringkv_client import Client
    with Client.connect("127.0.0.1:7000") as client:
        client.put(b"greeting", b"hello")
        assert client.get(b"greeting") == b"hello"

As a script:

    ringkv_client.py HOST:PORT                      self-check against a running frontend
    ringkv_client.py HOST:PORT --put KEY VALUE      store VALUE under KEY
    ringkv_client.py HOST:PORT --get KEY            print the value (exit 3 if not found)
    ringkv_client.py HOST:PORT --delete KEY         remove KEY (exit 3 if not found)

A cluster started with --require-auth needs its password: --password-file FILE, or the
RINGKV_PASSWORD environment variable (Client.connect's `password` argument as a library).

With --hex, KEY and VALUE are given in hex and --get prints the value in hex; without it they
are taken as UTF-8 text and --get writes the raw value bytes to stdout.
"""

import argparse
import os
import socket
import struct
import sys
import threading
import time
import zlib
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

# Section 2 and 3 of PROTOCOL.md.
MAGIC = b"RK"
VERSION = 1
KIND_REQUEST = 0
KIND_RESPONSE = 1
# length(u32) magic(2s) version kind opcode status (u8 each) hops hop_limit (u16)
# request_id epoch (u64) key_len value_len (u32): 38 bytes, all big-endian.
HEADER = struct.Struct(">I2sBBBBHHQQII")
HEADER_LEN = HEADER.size
CRC_LEN = 4
MIN_LENGTH = HEADER_LEN - 4 + CRC_LEN

# Where a password is read from when none is given (section 15 of PROTOCOL.md).
PASSWORD_ENV = "RINGKV_PASSWORD"

# Section 8 of PROTOCOL.md.
MAX_KEY = 16 * 1024
MAX_VALUE = 4 * 1024 * 1024
MAX_FRAME = 8 * 1024 * 1024

OPCODES = {
    "PUT": 0x01,
    "GET": 0x02,
    "DELETE": 0x03,
    "SIZE": 0x04,
    "STATS": 0x05,
    "PING": 0x06,
    "VIEW_INSTALL": 0x10,
    "AUTH": 0x1E,
    "UPDATE": 0x20,
    "SCAN": 0x21,
}

# The operations of an UPDATE (section 7.7 of PROTOCOL.md).
UPDATE_INCR_BY = 1
UPDATE_SET_IF_ABSENT = 2
UPDATE_SET_IF_PRESENT = 3
UPDATE_GET_SET = 4
UPDATE_GET_DELETE = 5
UPDATE_APPEND = 6
UPDATE_SET = 7
UPDATE_EXPIRE = 8
UPDATE_PERSIST = 9
UPDATE_TTL = 10
# A time in an UPDATE: milliseconds from now, or a Unix time in milliseconds.
TIME_IN = 2
TIME_AT = 3

STATUSES = {
    0x00: "OK",
    0x01: "NOT_FOUND",
    0x10: "BAD_FRAME",
    0x11: "TOO_LARGE",
    0x12: "UNKNOWN_OPCODE",
    0x13: "BUSY",
    0x14: "UNAVAILABLE",
    0x15: "STORAGE_FULL",
    0x16: "LOOP",
    0x17: "STALE_VIEW",
    0x18: "NO_VIEW",
    0x19: "BAD_REQUEST",
    0x1A: "INTERNAL",
    0x1B: "TOO_OLD",
    0x1C: "UNAUTHORIZED",
}
OK = 0x00
NOT_FOUND = 0x01


def status_name(status: int) -> str:
    return STATUSES.get(status, "STATUS(0x%02x)" % status)


class RingKVError(Exception):
    """Any failure of a ringkv call."""


class ConnectionFailed(RingKVError):
    """The connection could not be made, broke, timed out, or carried bytes that are not a frame.
    The client is closed afterwards."""


class StatusError(RingKVError):
    """The server answered with an error status.

    `status` is the number, `name` its name (e.g. "TOO_LARGE"), `message` the server's text, and
    `connection_closed` tells whether the server closed the connection after this answer (a
    connection-level error: opcode 0 in the answer, section 9 of PROTOCOL.md)."""

    def __init__(self, status: int, message: str, connection_closed: bool = False):
        self.status = status
        self.name = status_name(status)
        self.message = message
        self.connection_closed = connection_closed
        super().__init__("%s: %s" % (self.name, message) if message else self.name)


class Frame(NamedTuple):
    kind: int
    opcode: int
    status: int
    hops: int
    hop_limit: int
    request_id: int
    epoch: int
    key: bytes
    value: bytes


class NodeReport(NamedTuple):
    """One entry of a SIZE or STATS answer (section 7.1 of PROTOCOL.md)."""

    addr: str
    status: int
    message: str
    counters: List[Tuple[str, int]]

    def counter(self, name: str) -> int:
        for counter_name, value in self.counters:
            if counter_name == name:
                return value
        return 0


class Reply(NamedTuple):
    """The answer to one pipelined request."""

    status: int
    value: bytes
    hops: int

    @property
    def name(self) -> str:
        return status_name(self.status)


def encode_frame(
    opcode: int,
    request_id: int,
    key: bytes = b"",
    value: bytes = b"",
    kind: int = KIND_REQUEST,
    status: int = 0,
    hops: int = 0,
    hop_limit: int = 0,
    epoch: int = 0,
) -> bytes:
    length = HEADER_LEN - 4 + len(key) + len(value) + CRC_LEN
    header = HEADER.pack(
        length, MAGIC, VERSION, kind, opcode, status, hops, hop_limit,
        request_id, epoch, len(key), len(value),
    )
    body = header + key + value
    # The CRC covers everything before it, the length prefix included (section 4).
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def decode_frame(data: bytes) -> Frame:
    """Decodes one whole frame (exactly the bytes of one frame), checking every rule of section 9."""
    if len(data) < HEADER_LEN + CRC_LEN:
        raise ConnectionFailed("frame of %d bytes is shorter than a header" % len(data))
    (length, magic, version, kind, opcode, status, hops, hop_limit,
     request_id, epoch, key_len, value_len) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ConnectionFailed("bad magic %r" % magic)
    if version != VERSION:
        raise ConnectionFailed("protocol version %d is not supported" % version)
    if kind not in (KIND_REQUEST, KIND_RESPONSE):
        raise ConnectionFailed("kind byte %d is neither 0 nor 1" % kind)
    if length + 4 != len(data) or HEADER_LEN + key_len + value_len + CRC_LEN != len(data):
        raise ConnectionFailed(
            "lengths do not add up: length %d, key %d, value %d" % (length, key_len, value_len))
    crc_at = len(data) - CRC_LEN
    (expected,) = struct.unpack_from(">I", data, crc_at)
    computed = zlib.crc32(data[:crc_at]) & 0xFFFFFFFF
    if expected != computed:
        raise ConnectionFailed(
            "CRC mismatch: frame says 0x%08x, bytes give 0x%08x" % (expected, computed))
    key_end = HEADER_LEN + key_len
    return Frame(kind, opcode, status, hops, hop_limit, request_id, epoch,
                 data[HEADER_LEN:key_end], data[key_end:crc_at])


class _Reader:
    """Reads the u8, u16, u32, u64 and string fields of a payload (section 7), with bounds
    checks."""

    def __init__(self, data: bytes):
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RingKVError("payload ends early: needed %d bytes at offset %d" % (n, self.at))
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RingKVError("payload holds a string that is not UTF-8") from e


def decode_reports(data: bytes) -> List[NodeReport]:
    """Decodes a node report list (section 7.1 of PROTOCOL.md)."""
    r = _Reader(data)
    reports = []
    for _ in range(r.u16()):
        addr = r.text(r.u16())
        status = r.u8()
        message = r.text(r.u16())
        counters = []
        for _ in range(r.u16()):
            name = r.text(r.u8())
            counters.append((name, r.u64()))
        reports.append(NodeReport(addr, status, message, counters))
    if r.at != len(data):
        raise RingKVError("node report list has %d trailing bytes" % (len(data) - r.at))
    return reports


def parse_addr(addr: str) -> Tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("address %r is not HOST:PORT" % addr)
    return host.strip("[]"), int(port)


class Client:
    """One connection to a ringkv frontend. Not safe for use by several threads at once."""

    def __init__(self, sock: socket.socket, addr: str, max_frame: int = MAX_FRAME):
        self._sock = sock
        self.addr = addr
        self.max_frame = max_frame
        self._buf = bytearray()
        self._next_id = 1
        self.last_hops = 0

    @classmethod
    def connect(cls, addr: str, connect_timeout: float = 2.0, io_timeout: float = 10.0,
                max_frame: int = MAX_FRAME, password: Optional[bytes] = None) -> "Client":
        """Connects to HOST:PORT. Connecting may take `connect_timeout` seconds; each later read
        or write may block for `io_timeout` seconds. With a `password` (default: the
        RINGKV_PASSWORD environment variable, if set), the connection presents it with AUTH
        (section 15 of PROTOCOL.md) before anything else."""
        if password is None and os.environ.get(PASSWORD_ENV):
            password = os.environb[PASSWORD_ENV.encode()].strip()
        host, port = parse_addr(addr)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
            sock.settimeout(io_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise ConnectionFailed("cannot connect to %s: %s" % (addr, e)) from e
        client = cls(sock, addr, max_frame)
        if password:
            try:
                client.auth(password)
            except BaseException:
                client.close()
                raise
        return client

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            try:
                # Shutting down first wakes a pipeline writer blocked in sendall.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Frames on the socket.

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionFailed("the connection to %s is closed" % self.addr)
        return self._sock

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id = (self._next_id + 1) % (1 << 64) or 1
        return request_id

    def _fail(self, message: str, cause: Optional[BaseException] = None) -> ConnectionFailed:
        self.close()
        error = ConnectionFailed("%s: %s" % (self.addr, message))
        error.__cause__ = cause
        return error

    def _send(self, data: bytes) -> None:
        try:
            self._socket().sendall(data)
        except OSError as e:
            refusal = self._pending_refusal()
            if refusal is not None:
                raise refusal from e
            raise self._fail("write failed: %s" % e, e) from e

    def _pending_refusal(self) -> Optional["StatusError"]:
        """After a failed write: the connection-level error answer the server sent before closing
        (BUSY, or TOO_LARGE for a frame over its limit), if it can still be read."""
        try:
            frame = self._recv_frame()
        except RingKVError:
            return None
        self.close()
        if frame.opcode == 0 and frame.status != OK:
            return StatusError(frame.status, frame.value.decode("utf-8", "replace"),
                               connection_closed=True)
        return None

    def _fill(self, want: int) -> None:
        sock = self._socket()
        while len(self._buf) < want:
            try:
                chunk = sock.recv(max(want - len(self._buf), 65536))
            except socket.timeout as e:
                raise self._fail("no answer within the i/o timeout", e) from e
            except OSError as e:
                raise self._fail("read failed: %s" % e, e) from e
            if not chunk:
                raise self._fail("the server closed the connection")
            self._buf += chunk

    def _recv_frame(self) -> Frame:
        self._fill(4)
        (length,) = struct.unpack_from(">I", self._buf)
        # The length is checked before anything is allocated for it (section 8).
        if length + 4 > self.max_frame:
            raise self._fail("answer of %d bytes is over the limit of %d" % (length + 4, self.max_frame))
        if length < MIN_LENGTH:
            raise self._fail("length prefix %d is shorter than a header" % length)
        self._fill(length + 4)
        data = bytes(self._buf[:length + 4])
        del self._buf[:length + 4]
        try:
            frame = decode_frame(data)
        except ConnectionFailed as e:
            raise self._fail(str(e)) from e
        if frame.kind != KIND_RESPONSE:
            raise self._fail("the server sent a request, not an answer")
        return frame

    def _answer_to(self, opcode: int, request_id: int) -> Frame:
        """Reads the answer to the oldest outstanding request and checks that it is one."""
        frame = self._recv_frame()
        if frame.opcode == 0 and frame.status != OK:
            # A connection-level error (BUSY, BAD_FRAME, TOO_LARGE frame): the server closes the
            # connection, and the id may be 0, so it is reported before the id check.
            self.close()
            raise StatusError(frame.status, frame.value.decode("utf-8", "replace"),
                              connection_closed=True)
        if frame.request_id != request_id:
            raise self._fail("answer carries request id %d while %d was outstanding"
                             % (frame.request_id, request_id))
        if frame.opcode != opcode:
            raise self._fail("answer to opcode 0x%02x carries opcode 0x%02x"
                             % (opcode, frame.opcode))
        self.last_hops = frame.hops
        return frame

    def call(self, opcode: int, key: bytes = b"", value: bytes = b"") -> Frame:
        """Sends one request and returns its answer, whatever its status."""
        request_id = self._take_id()
        self._send(encode_frame(opcode, request_id, key, value))
        return self._answer_to(opcode, request_id)

    @staticmethod
    def _check(frame: Frame) -> Frame:
        if frame.status in (OK, NOT_FOUND):
            return frame
        raise StatusError(frame.status, frame.value.decode("utf-8", "replace"))

    # Operations.

    def auth(self, password: bytes) -> None:
        """Presents the password of a server started with --require-auth (UNAUTHORIZED if it
        is wrong; a server without a password answers OK)."""
        self._check(self.call(OPCODES["AUTH"], b"", password))

    def put(self, key: bytes, value: bytes) -> None:
        answer = self._check(self.call(OPCODES["PUT"], key, value))
        if answer.status != OK:
            raise StatusError(answer.status, "PUT answered %s" % status_name(answer.status))

    def get(self, key: bytes) -> Optional[bytes]:
        """The value stored under `key`, or None."""
        answer = self._check(self.call(OPCODES["GET"], key))
        return answer.value if answer.status == OK else None

    def delete(self, key: bytes) -> bool:
        """Removes `key`; True if it was stored."""
        return self._check(self.call(OPCODES["DELETE"], key)).status == OK

    def _update(self, key: bytes, operation: int, operand: bytes = b"") -> bytes:
        """An UPDATE of `key` at its head; the answer's value. Sent once: an error other than
        BAD_REQUEST or TOO_LARGE may mean it took effect."""
        return self._check(self.call(OPCODES["UPDATE"], key, bytes([operation]) + operand)).value

    def incr_by(self, key: bytes, by: int) -> int:
        """Adds `by` to the decimal integer under `key` (absent: 0); returns the sum."""
        answer = self._update(key, UPDATE_INCR_BY, struct.pack(">q", by))
        return struct.unpack(">q", answer)[0]

    def put_if_absent(self, key: bytes, value: bytes) -> bool:
        """Stores `value` only if `key` is absent; True if it did."""
        return self._update(key, UPDATE_SET_IF_ABSENT, value) == b"\x01"

    def get_and_delete(self, key: bytes) -> Optional[bytes]:
        """Removes `key`; returns what it held, or None."""
        answer = self._update(key, UPDATE_GET_DELETE)
        return answer[1:] if answer[:1] == b"\x01" else None

    def append(self, key: bytes, suffix: bytes) -> int:
        """Appends `suffix` to the value under `key`; returns the new length."""
        return struct.unpack(">Q", self._update(key, UPDATE_APPEND, suffix))[0]

    def put_with_ttl(self, key: bytes, value: bytes, ttl_ms: int) -> None:
        """Stores `value` under `key` for `ttl_ms` milliseconds (an UPDATE set, section 7.7)."""
        # Flags 0: store whether or not the key is present, no old value back.
        self._update(key, UPDATE_SET, bytes([0, TIME_IN]) + struct.pack(">q", ttl_ms) + value)

    def expire(self, key: bytes, ttl_ms: int) -> bool:
        """Gives `key` a time to live of `ttl_ms`; False if it is absent."""
        return self._update(key, UPDATE_EXPIRE, bytes([0, TIME_IN]) + struct.pack(">q", ttl_ms)) == b"\x01"

    def persist(self, key: bytes) -> bool:
        """Takes `key`'s time to live away; False if it had none or is absent."""
        return self._update(key, UPDATE_PERSIST) == b"\x01"

    def ttl(self, key: bytes) -> Tuple[int, int]:
        """Milliseconds left and the Unix time in milliseconds `key` expires at; (-1, -1) for a
        key that never expires, (-2, -2) for an absent one."""
        return struct.unpack(">qq", self._update(key, UPDATE_TTL))

    def scan(self, cursor: int, count: int = 10, pattern: bytes = b"") -> Tuple[int, List[bytes]]:
        """One SCAN step (section 7.8): the next cursor (0: done) and some keys."""
        value = struct.pack(">QI", cursor, count) + pattern
        reader = _Reader(self._check(self.call(OPCODES["SCAN"], b"", value)).value)
        cursor = reader.u64()
        keys = [reader.take(reader.u32()) for _ in range(reader.u32())]
        return cursor, keys

    def scan_all(self, pattern: bytes = b"", count: int = 100) -> List[bytes]:
        """Every key that matches `pattern`, walking SCAN to its end (a view change during the
        walk is a STALE_VIEW error: start again)."""
        keys: List[bytes] = []
        cursor = 0
        while True:
            cursor, found = self.scan(cursor, count, pattern)
            keys.extend(found)
            if cursor == 0:
                return keys

    def size(self) -> List[NodeReport]:
        """Keys and bytes per backend, then a report addressed 'total'."""
        return decode_reports(self._check(self.call(OPCODES["SIZE"])).value)

    def stats(self) -> List[NodeReport]:
        """Every counter per backend, then a report addressed 'total'."""
        return decode_reports(self._check(self.call(OPCODES["STATS"])).value)

    def ping(self) -> float:
        """Round-trip time in seconds."""
        started = time.monotonic()
        self._check(self.call(OPCODES["PING"]))
        return time.monotonic() - started

    def pipeline(self, requests: Iterable[Sequence]) -> List[Reply]:
        """Sends every request before waiting for any answer; returns the answers in order.

        Each request is ("PUT", key, value), ("GET", key) or ("DELETE", key). A request the server
        refuses gets an error Reply; the call raises only when the connection fails. The frames are
        written on a second thread while this one reads, because a server does not read while it
        is blocked writing answers nobody reads (section 16 of PROTOCOL.md)."""
        outstanding = []
        out = bytearray()
        for request in requests:
            op = request[0].upper()
            if op == "PUT":
                key, value = request[1], request[2]
            elif op in ("GET", "DELETE"):
                key, value = request[1], b""
            else:
                raise ValueError("cannot pipeline %r" % (op,))
            request_id = self._take_id()
            outstanding.append((OPCODES[op], request_id))
            out += encode_frame(OPCODES[op], request_id, key, value)
        sock = self._socket()
        write_error: List[BaseException] = []

        def write_all() -> None:
            try:
                sock.sendall(out)
            except OSError as e:
                write_error.append(e)

        writer = threading.Thread(target=write_all, name="ringkv-pipeline-writer", daemon=True)
        writer.start()
        replies = []
        try:
            for opcode, request_id in outstanding:
                frame = self._answer_to(opcode, request_id)
                replies.append(Reply(frame.status, frame.value, frame.hops))
        finally:
            # A failed read has closed the socket, which ends a blocked write too.
            writer.join()
        if write_error:
            raise self._fail("write failed: %s" % write_error[0], write_error[0])
        return replies


# The self-check run by `ringkv_client.py HOST:PORT`.

class SelfCheck:
    def __init__(self, addr: str):
        self.addr = addr
        self.passed = 0
        self.failed = 0
        # Every run uses fresh keys so that it can be repeated against the same cluster.
        self.tag = os.urandom(6).hex()

    def key(self, name: str) -> bytes:
        return ("selfcheck-%s-%s" % (self.tag, name)).encode()

    def run(self, name: str, check) -> None:
        try:
            detail = check()
        except Exception as e:  # every failure, whatever its type, is one FAIL line
            self.failed += 1
            print("FAIL %s: %s: %s" % (name, type(e).__name__, e), flush=True)
            return
        self.passed += 1
        print("ok   %s%s" % (name, " (%s)" % detail if detail else ""), flush=True)

    def client(self) -> Client:
        return Client.connect(self.addr)


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def run_self_check(addr: str) -> int:
    check = SelfCheck(addr)
    client = Client.connect(addr)
    stored = set()

    def ping():
        return "%.2f ms" % (client.ping() * 1000)

    def put_get():
        key = check.key("plain")
        client.put(key, b"value one")
        stored.add(key)
        got = client.get(key)
        expect(got == b"value one", "GET returned %r" % got)

    def overwrite():
        key = check.key("plain")
        client.put(key, b"value two, longer")
        got = client.get(key)
        expect(got == b"value two, longer", "GET after overwrite returned %r" % got)

    def delete():
        key = check.key("doomed")
        client.put(key, b"x")
        expect(client.delete(key) is True, "DELETE of a stored key did not answer OK")
        expect(client.get(key) is None, "the deleted key is still there")
        expect(client.delete(key) is False, "a second DELETE did not answer NOT_FOUND")

    def binary():
        key = bytes(range(256)) + check.tag.encode()
        value = bytes(range(256)) * 4
        client.put(key, value)
        stored.add(key)
        expect(client.get(key) == value, "the binary value came back different")

    def empty_value():
        key = check.key("empty")
        client.put(key, b"")
        stored.add(key)
        got = client.get(key)
        expect(got == b"", "GET of an empty value returned %r" % (got,))

    def big_value():
        key = check.key("mebibyte")
        value = os.urandom(1024 * 1024)
        client.put(key, value)
        stored.add(key)
        expect(client.get(key) == value, "the 1 MiB value came back different")

    def not_found():
        got = client.get(check.key("never-stored"))
        expect(got is None, "GET of a missing key returned %r" % (got,))
        expect(client.delete(check.key("never-stored")) is False,
               "DELETE of a missing key did not answer NOT_FOUND")

    def pipeline():
        count = 1000
        keys = [check.key("pipe-%d" % i) for i in range(count // 2)]
        requests = []
        for i, key in enumerate(keys):
            requests.append(("PUT", key, b"value-%d" % i))
            requests.append(("GET", key))
        replies = client.pipeline(requests)
        stored.update(keys)
        expect(len(replies) == count, "%d answers to %d requests" % (len(replies), count))
        for i, key in enumerate(keys):
            put, get = replies[2 * i], replies[2 * i + 1]
            expect(put.status == OK, "pipelined PUT %d answered %s" % (i, put.name))
            expect(get.status == OK and get.value == b"value-%d" % i,
                   "pipelined GET %d answered %s %r" % (i, get.name, get.value[:40]))
        return "%d requests" % count

    def split_total(reports: List[NodeReport]) -> Tuple[List[NodeReport], NodeReport]:
        expect(len(reports) >= 2, "%d reports, expected backends and a total" % len(reports))
        nodes, total = reports[:-1], reports[-1]
        expect(total.addr == "total", "the last report is %r, not 'total'" % total.addr)
        expect(total.status == OK, "the total has status %s" % status_name(total.status))
        for node in nodes:
            expect(node.status == OK, "backend %s reported %s: %s"
                   % (node.addr, status_name(node.status), node.message))
        return nodes, total

    def size():
        nodes, total = split_total(client.size())
        for name in ("keys", "bytes"):
            expect(total.counter(name) == sum(n.counter(name) for n in nodes),
                   "total %s is not the sum over the backends" % name)
        expect(total.counter("keys") >= len(stored),
               "%d keys in total, but this check stored %d" % (total.counter("keys"), len(stored)))
        return "%d backends, %d keys, %d bytes" % (
            len(nodes), total.counter("keys"), total.counter("bytes"))

    def stats():
        nodes, total = split_total(client.stats())
        names = [name for name, _ in total.counters]
        for name in ("keys", "bytes", "requests", "puts", "gets", "deletes",
                     "served", "relayed", "hops", "errors"):
            expect(name in names, "STATS has no %r counter" % name)
            expect(total.counter(name) == sum(n.counter(name) for n in nodes),
                   "total %s is not the sum over the backends" % name)
        served = total.counter("served")
        expect(served == total.counter("puts") + total.counter("gets") + total.counter("deletes"),
               "served is not puts + gets + deletes")
        expect(served >= 1000, "only %d requests served after this check's pipeline" % served)
        return "%d served, %d relayed" % (served, total.counter("relayed"))

    def key_too_large():
        try:
            client.put(b"k" * (MAX_KEY + 1), b"v")
        except StatusError as e:
            expect(e.name == "TOO_LARGE", "a key over the limit got %s" % e.name)
            expect(not e.connection_closed, "the server closed the connection")
        else:
            raise AssertionError("a key over the limit was stored")
        client.ping()
        expect(client.get(check.key("plain")) == b"value two, longer",
               "the connection is not usable after TOO_LARGE")
        return "connection still usable"

    def unknown_opcode():
        answer = client.call(0x7F)
        expect(status_name(answer.status) == "UNKNOWN_OPCODE",
               "opcode 0x7f got %s" % status_name(answer.status))
        client.ping()

    def empty_key():
        try:
            client.get(b"")
        except StatusError as e:
            expect(e.name == "BAD_REQUEST", "an empty key got %s" % e.name)
        else:
            raise AssertionError("a GET with an empty key succeeded")
        client.ping()

    def increments():
        key = check.key("counter")
        sums = [client.incr_by(key, 5), client.incr_by(key, -2)]
        expect(sums == [5, 3], "increments answered %r" % (sums,))
        expect(client.get(key) == b"3", "the counter holds %r" % (client.get(key),))
        try:
            client.incr_by(check.key("plain"), 1)
        except StatusError as e:
            expect(e.name == "BAD_REQUEST", "incrementing text got %s" % e.name)
        else:
            raise AssertionError("incrementing a value that is not a number succeeded")

    def conditional_and_append():
        key = check.key("once")
        expect(client.put_if_absent(key, b"first"), "the first put_if_absent did not store")
        expect(not client.put_if_absent(key, b"second"), "the second put_if_absent stored")
        expect(client.append(key, b"+more") == len(b"first+more"), "append's length")
        expect(client.get_and_delete(key) == b"first+more", "get_and_delete's value")
        expect(client.get_and_delete(key) is None, "a second get_and_delete found something")

    def expiry():
        key = check.key("cached")
        client.put_with_ttl(key, b"for a while", 60_000)
        left, at = client.ttl(key)
        expect(0 < left <= 60_000, "%d ms left of 60,000" % left)
        expect(abs(at - (time.time() * 1000 + left)) < 10_000, "it expires at %d" % at)
        expect(client.persist(key), "persist found no time to live")
        expect(client.ttl(key) == (-1, -1), "after persist: %r" % (client.ttl(key),))
        expect(client.ttl(check.key("never")) == (-2, -2), "an absent key's time to live")
        expect(client.expire(key, 150), "expire did not find the key")
        deadline = time.time() + 10
        while client.get(key) is not None:
            expect(time.time() < deadline, "the key did not expire")
            time.sleep(0.02)
        expect(client.ttl(key) == (-2, -2), "an expired key's time to live")
        try:
            client.put_with_ttl(key, b"v", 0)
        except StatusError as e:
            expect(e.name == "BAD_REQUEST", "a zero time to live got %s" % e.name)
        else:
            raise AssertionError("a zero time to live was taken")
        return "expired after 150 ms"

    def scan():
        names = [check.key("scan-%d" % i) for i in range(30)]
        for name in names:
            client.put(name, b"v")
        listed = client.scan_all(check.key("scan-*"), count=7)
        expect(sorted(listed) == sorted(names), "scan listed %d of 30 keys" % len(listed))

    def second_connection():
        with check.client() as other:
            got = other.get(check.key("plain"))
            expect(got == b"value two, longer", "a second connection read %r" % (got,))

    for name, step in [
        ("ping", ping),
        ("put and get", put_get),
        ("overwrite", overwrite),
        ("delete", delete),
        ("binary key and value with every byte 0..255", binary),
        ("empty value", empty_value),
        ("1 MiB value", big_value),
        ("missing key is NOT_FOUND", not_found),
        ("pipeline answers in order", pipeline),
        ("SIZE reports and total", size),
        ("STATS reports and total", stats),
        ("key over the limit is TOO_LARGE", key_too_large),
        ("unknown opcode is UNKNOWN_OPCODE", unknown_opcode),
        ("empty key is BAD_REQUEST", empty_key),
        ("UPDATE increments at the head", increments),
        ("UPDATE set-if-absent, append, get-and-delete", conditional_and_append),
        ("UPDATE times to live: set, ttl, persist, expire", expiry),
        ("SCAN lists every matching key once", scan),
        ("second connection sees the data", second_connection),
    ]:
        check.run(name, step)
    client.close()
    total = check.passed + check.failed
    if check.failed:
        print("%d of %d checks failed" % (check.failed, total), flush=True)
        return 1
    print("all %d checks passed" % total, flush=True)
    return 0


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description="ringkv client and self-check")
    parser.add_argument("addr", metavar="HOST:PORT", help="the frontend's address")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--put", nargs=2, metavar=("KEY", "VALUE"), help="store VALUE under KEY")
    mode.add_argument("--get", metavar="KEY", help="print the value stored under KEY")
    mode.add_argument("--delete", metavar="KEY", help="remove KEY")
    parser.add_argument("--hex", action="store_true", help="KEY, VALUE and output are hex")
    parser.add_argument("--timeout", type=float, default=10.0, help="i/o timeout in seconds")
    parser.add_argument("--password-file", metavar="FILE",
                        help="file holding the password (default: $RINGKV_PASSWORD)")
    args = parser.parse_args(argv)
    if args.password_file is not None:
        try:
            with open(args.password_file, "rb") as f:
                os.environb[PASSWORD_ENV.encode()] = f.read().strip()
        except OSError as e:
            print("ringkv_client: cannot read the password file: %s" % e, file=sys.stderr)
            return 2

    def arg_bytes(text: str) -> bytes:
        return bytes.fromhex(text) if args.hex else text.encode("utf-8")

    try:
        parse_addr(args.addr)
        if args.put is None and args.get is None and args.delete is None:
            return run_self_check(args.addr)
        with Client.connect(args.addr, io_timeout=args.timeout) as client:
            if args.put is not None:
                client.put(arg_bytes(args.put[0]), arg_bytes(args.put[1]))
                return 0
            if args.delete is not None:
                return 0 if client.delete(arg_bytes(args.delete)) else 3
            value = client.get(arg_bytes(args.get))
            if value is None:
                print("NOT_FOUND", file=sys.stderr)
                return 3
            if args.hex:
                print(value.hex())
            else:
                sys.stdout.buffer.write(value)
                sys.stdout.flush()
            return 0
    except ValueError as e:
        print("ringkv_client: %s" % e, file=sys.stderr)
        return 2
    except RingKVError as e:
        print("ringkv_client: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
