"""A SASL listener in front of the embedded broker (which has none), as a
Kafka cluster with a SASL_PLAINTEXT listener looks to its clients: before a
client has authenticated it may only ask for the API versions; it must then
complete SaslHandshake (v1) and SaslAuthenticate (v0–v2) with PLAIN or
SCRAM-SHA-256/512 (RFC 5802, 7677) against the users given, after which the
Kafka protocol is forwarded both ways unchanged. Anything else before that,
or a wrong password, closes the connection, as a broker does. The broker
advertises the front's port, so no client reaches it directly."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import struct

from tests.integration.fronted import Front

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
SCRAM = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


class _Reader:
    def __init__(self, data: bytes, at: int = 0):
        self.data, self.at = data, at

    def take(self, n: int) -> bytes:
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def string(self) -> str | None:
        n = self.int16()
        return None if n < 0 else self.take(n).decode()

    def tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


class _Scram:
    """The server's side of one SCRAM exchange (two client messages)."""

    def __init__(self, mechanism: str, users: dict[str, str]):
        self.hash, self.users = SCRAM[mechanism], users
        self.step, self.user = 0, ""

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.hash).digest()

    def reply(self, message: bytes) -> tuple[bytes | None, str]:
        """(the server's message, "") or (None, why it failed); the user is
        self.user once the client-final message has been verified."""
        text = message.decode()
        if self.step == 0:
            self.step = 1
            if not text.startswith("n,,"):
                return None, "channel binding or authzid not supported"
            self.client_first_bare = text[3:]
            attrs = dict(a.split("=", 1) for a in self.client_first_bare.split(","))
            name = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
            if name not in self.users:
                return None, f"unknown user {name!r}"
            self.name, self.salt, self.iterations = name, os.urandom(16), 4096
            self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
            self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
            return self.server_first.encode(), ""
        without_proof, _, proof = text.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(","))
        if attrs.get("r") != self.nonce or attrs.get("c") != "biws":
            return None, "nonce or channel binding mismatch"
        salted = hashlib.pbkdf2_hmac(self.hash, self.users[self.name].encode(), self.salt, self.iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.hash, client_key).digest()
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if not hmac.compare_digest(base64.b64decode(proof), expected):
            return None, f"wrong password for {self.name!r}"
        self.user = self.name
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return b"v=" + base64.b64encode(server_signature), ""


class SaslFront(Front):
    name = "SASL front"

    def __init__(self, upstream_port: int, port: int, users: dict[str, str],
                 mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")):
        self.users, self.mechanisms = users, mechanisms
        self.authenticated: list[tuple[str, str]] = []  # (mechanism, user) of each connection let through
        self.refused: list[str] = []  # why each refused connection was closed
        super().__init__(upstream_port, port)

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        size = struct.unpack(">i", await reader.readexactly(4))[0]
        return await reader.readexactly(size)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, payload: bytes) -> None:
        writer.write(struct.pack(">i", len(payload)) + payload)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader = up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(self.pump(reader, up_writer), self.pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, struct.error):
            pass
        finally:
            writer.close()
            if up_writer is not None:
                up_writer.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> bool:
        mechanism, scram = "", None
        while True:
            frame = await self._frame(reader)
            r = _Reader(frame)
            api_key, version, correlation = r.int16(), r.int16(), r.int32()
            r.string()  # client id
            if api_key == API_VERSIONS:  # the broker's own answer
                self._send(up_writer, frame)
                self._send(writer, await self._frame(up_reader))
                await writer.drain()
                continue
            if api_key == SASL_HANDSHAKE and not mechanism:
                wanted = r.string() or ""
                error = 0 if wanted in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
                body = struct.pack(">ih", correlation, error) + struct.pack(">i", len(self.mechanisms)) + \
                    b"".join(_string(m) for m in self.mechanisms)
                self._send(writer, body)
                await writer.drain()
                if error:
                    self.refused.append(f"mechanism {wanted}")
                    return False
                mechanism = wanted
                scram = _Scram(mechanism, self.users) if mechanism in SCRAM else None
                continue
            if api_key == SASL_AUTHENTICATE and mechanism:
                flexible = version >= 2
                if flexible:
                    r.tagged_fields()
                    message = r.take(r.uvarint() - 1)
                else:
                    message = r.take(r.int32())
                user, reply, why = "", b"", ""
                if scram is None:  # PLAIN: authzid NUL user NUL password
                    _, name, password = (message.split(b"\0") + [b"", b""])[:3]
                    ok = self.users.get(name.decode()) == password.decode() and bool(name)
                    user, why = (name.decode(), "") if ok else ("", f"wrong password for {name.decode()!r}")
                else:
                    answer, why = scram.reply(message)
                    reply, user = answer or b"", scram.user
                error = SASL_AUTHENTICATION_FAILED if why else 0
                self._send(writer, self._authenticate_response(correlation, version, error, why or None, reply))
                await writer.drain()
                if why:
                    self.refused.append(why)
                    return False
                if user:  # PLAIN at once; SCRAM after its second message
                    self.authenticated.append((mechanism, user))
                    return True
                continue
            self.refused.append(f"API {api_key} before authentication")
            return False

    @staticmethod
    def _authenticate_response(correlation: int, version: int, error: int, message: str | None,
                               auth: bytes) -> bytes:
        if version >= 2:  # flexible: response header v1, compact strings and bytes
            raw = None if message is None else message.encode()
            text = _uvarint(0) if raw is None else _uvarint(len(raw) + 1) + raw
            return struct.pack(">i", correlation) + _uvarint(0) + struct.pack(">h", error) + text + \
                _uvarint(len(auth) + 1) + auth + struct.pack(">q", 0) + _uvarint(0)
        out = struct.pack(">ih", correlation, error) + _string(message) + struct.pack(">i", len(auth)) + auth
        return out + (struct.pack(">q", 0) if version >= 1 else b"")
