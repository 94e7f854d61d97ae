"""Client authentication to Fig (cleartext, md5, SCRAM-SHA-256) and Fig's answers to the backend.

Fig checks the client against the role's verifier in pg_authid, as Postgres itself does, then
opens the backend session as that role. The exchanges below do no I/O: `Authenticator` and
`BackendCredentials` move their bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from fig_server import wire
from fig_server.config import FigConfig
from fig_server.errors import (
    ConfigurationError,
    InvalidAuthorization,
    InvalidPassword,
    ProtocolViolation,
)
from fig_server.hot.backend import BackendConnection
from fig_server.hot.roles import RoleDirectory, RoleSecret

METHODS = ("trust", "password", "md5", "scram-sha-256")
SCRAM = "SCRAM-SHA-256"
SCRAM_ITERATIONS = 4096
NONCE_BYTES = 18

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5 = 0, 3, 5
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" (every interface)


def refuse_open_trust(config: FigConfig) -> None:
    """Trust beyond loopback hands every client who reaches the port any role, the superuser
    too: refuse to start that way unless it is asked for explicitly (as the official Postgres
    image refuses without POSTGRES_PASSWORD or POSTGRES_HOST_AUTH_METHOD=trust)."""
    host = config.server.host
    if config.auth.method == "trust" and not _loopback(host) and not config.auth.trust_remote:
        raise ConfigurationError(
            f"refusing to listen on {host or 'every interface'} with [auth] method = \"trust\": "
            "any client that reaches the port could connect as any role",
            hint="set [auth] method = \"scram-sha-256\" (with superuser_password for the "
                 "embedded Postgres), or allow it explicitly with [auth] trust_remote = true "
                 "(FIG__AUTH__TRUST_REMOTE=true)")


class AuthFailed(Exception):
    """The client's proof did not match; reported only as 28P01, with no detail."""


# -- primitives ----------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _prohibited(char: str) -> bool:
    return any(check(char) for check in (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
        stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
        stringprep.in_table_a1))


def saslprep(password: bytes) -> bytes:
    """RFC 4013 SASLprep; like Postgres, the password as sent when it cannot be prepared."""
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return password
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in text if not stringprep.in_table_b1(c))
    prepared = unicodedata.normalize("NFKC", mapped)
    if any(_prohibited(c) for c in prepared):
        return password
    rand_al = [stringprep.in_table_d1(c) for c in prepared]
    if any(rand_al) and (any(stringprep.in_table_d2(c) for c in prepared)
                         or not (rand_al[0] and rand_al[-1])):
        return password
    return prepared.encode("utf-8")


def salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)


@dataclass(frozen=True)
class ScramSecret:
    """The parts of a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, verifier: str) -> ScramSecret | None:
        try:
            method, iter_salt, keys = verifier.split("$")
            iterations, salt = iter_salt.split(":")
            stored, server = keys.split(":")
            if method != SCRAM:
                return None
            return cls(int(iterations), base64.b64decode(salt, validate=True),
                       base64.b64decode(stored, validate=True),
                       base64.b64decode(server, validate=True))
        except ValueError:
            return None

    @classmethod
    def from_password(cls, password: bytes, salt: bytes,
                      iterations: int = SCRAM_ITERATIONS) -> ScramSecret:
        salted = salted_password(password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(iterations, salt, hashlib.sha256(client_key).digest(),
                   _hmac(salted, b"Server Key"))

    def verifier(self) -> str:
        return (f"{SCRAM}${self.iterations}:{_b64(self.salt)}$"
                f"{_b64(self.stored_key)}:{_b64(self.server_key)}")


def md5_verifier(password: bytes, user: str) -> str:
    """What Postgres stores for an md5 password: 'md5' + md5(password || user)."""
    return "md5" + hashlib.md5(password + user.encode()).hexdigest()


def md5_response(verifier: str, salt: bytes) -> str:
    """The answer to an md5 challenge, computed from the stored md5 verifier."""
    return "md5" + hashlib.md5(verifier[3:].encode() + salt).hexdigest()


def check_password(password: bytes, user: str, verifier: str | None) -> bool:
    """Does a cleartext password match the stored verifier (SCRAM or md5)?"""
    if verifier is None:
        return False
    scram = ScramSecret.parse(verifier)
    if scram is not None:
        mine = ScramSecret.from_password(password, scram.salt, scram.iterations)
        return hmac.compare_digest(mine.stored_key, scram.stored_key)
    if verifier.startswith("md5") and len(verifier) == 35:
        return hmac.compare_digest(md5_verifier(password, user), verifier)
    return False


# -- SCRAM-SHA-256, server side (RFC 5802, RFC 7677) ------------------------------------------

def _attributes(message: str) -> list[tuple[str, str]]:
    out = []
    for part in message.split(","):
        name, sep, value = part.partition("=")
        if not sep or len(name) != 1:
            raise ProtocolViolation("malformed SCRAM message")
        out.append((name, value))
    return out


class ScramServer:
    """One SCRAM exchange against a secret (a mock one for unknown roles: always fails)."""

    def __init__(self, secret: ScramSecret, genuine: bool) -> None:
        self.secret = secret
        self.genuine = genuine
        self.nonce = ""
        self.client_first_bare = ""
        self.server_first = ""
        self.gs2_header = ""
        self.client_key = b""

    def on_client_first(self, message: bytes) -> bytes:
        text = message.decode("utf-8", errors="strict")
        cbind, _, rest = text.partition(",")
        authzid, _, bare = rest.partition(",")
        if cbind.startswith("p="):
            raise ProtocolViolation("channel binding was not offered by the server")
        if cbind not in ("n", "y") or authzid:
            raise ProtocolViolation("malformed SCRAM message: bad GS2 header")
        attributes = dict(_attributes(bare))
        client_nonce = attributes.get("r", "")
        if not client_nonce or "," in client_nonce:
            raise ProtocolViolation("malformed SCRAM message: missing nonce")
        self.gs2_header = f"{cbind},{authzid},"
        self.client_first_bare = bare
        self.nonce = client_nonce + _b64(secrets.token_bytes(NONCE_BYTES))
        self.server_first = (f"r={self.nonce},s={_b64(self.secret.salt)},"
                             f"i={self.secret.iterations}")
        return self.server_first.encode()

    def on_client_final(self, message: bytes) -> bytes:
        text = message.decode("utf-8", errors="strict")
        without_proof, sep, proof_text = text.rpartition(",p=")
        if not sep:
            raise ProtocolViolation("malformed SCRAM message: missing proof")
        attributes = dict(_attributes(without_proof))
        if attributes.get("r") != self.nonce:
            raise ProtocolViolation("SCRAM nonce mismatch")
        if attributes.get("c") != _b64(self.gs2_header.encode()):
            raise ProtocolViolation("SCRAM channel binding check failed")
        try:
            proof = base64.b64decode(proof_text, validate=True)
        except ValueError as exc:
            raise ProtocolViolation("malformed SCRAM proof") from exc
        auth_message = ",".join(
            (self.client_first_bare, self.server_first, without_proof)).encode()
        signature = _hmac(self.secret.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ProtocolViolation("malformed SCRAM proof")
        client_key = _xor(proof, signature)
        matches = hmac.compare_digest(hashlib.sha256(client_key).digest(),
                                      self.secret.stored_key)
        if not (matches and self.genuine):
            raise AuthFailed
        self.client_key = client_key
        return f"v={_b64(_hmac(self.secret.server_key, auth_message))}".encode()


# -- SCRAM-SHA-256, client side: Fig towards a backend that asks for a password ----------------

class ScramClient:
    """Fig logging in to the backend with the client's password, or with the ClientKey the
    client proved during its own SCRAM exchange (the verifier is the same pg_authid row)."""

    def __init__(self, password: bytes | None, secret: ScramSecret | None,
                 client_key: bytes) -> None:
        self.password = password
        self.secret = secret
        self.client_key = client_key
        self.nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        self.client_first_bare = f"n=,r={self.nonce}"
        self.server_key = b""
        self.auth_message = b""

    def initial_response(self) -> bytes:
        data = f"n,,{self.client_first_bare}".encode()
        return wire.cstring(SCRAM) + wire.INT32.pack(len(data)) + data

    def on_server_first(self, message: bytes) -> bytes:
        server_first = message.decode()
        attributes = dict(_attributes(server_first))
        nonce, salt = attributes.get("r", ""), base64.b64decode(attributes.get("s", ""))
        iterations = int(attributes.get("i", "0"))
        if not nonce.startswith(self.nonce):
            raise ProtocolViolation("the hot PostgreSQL answered with a bad SCRAM nonce")
        if self.password is not None:
            salted = salted_password(self.password, salt, iterations)
            client_key, self.server_key = _hmac(salted, b"Client Key"), \
                _hmac(salted, b"Server Key")
        elif self.secret is not None and self.client_key and \
                (self.secret.salt, self.secret.iterations) == (salt, iterations):
            client_key, self.server_key = self.client_key, self.secret.server_key
        else:
            raise InvalidAuthorization(
                "Fig cannot answer the hot PostgreSQL's SCRAM request for this role",
                hint="Use [auth] method = \"password\" or let the hot PostgreSQL trust Fig.")
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        self.auth_message = f"{self.client_first_bare},{server_first},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), self.auth_message)
        return f"{without_proof},p={_b64(_xor(client_key, signature))}".encode()

    def check_server_final(self, message: bytes) -> None:
        expected = f"v={_b64(_hmac(self.server_key, self.auth_message))}".encode()
        if not hmac.compare_digest(message.strip(b"\0"), expected):
            raise InvalidAuthorization("the hot PostgreSQL's SCRAM signature is wrong")


@dataclass
class BackendCredentials:
    """What Fig knows after the client authenticated, to answer the backend's own request."""

    user: str
    password: bytes | None = None
    verifier: str | None = None
    client_key: bytes = b""

    async def answer(self, backend: BackendConnection, payload: bytes) -> bytes | None:
        """Run the backend's authentication from its first 'R'; None once it says OK, else
        the payload of the ErrorResponse it ended with."""
        scram: ScramClient | None = None
        while True:
            code = wire.INT32.unpack_from(payload)[0]
            data = payload[4:]
            if code == AUTH_OK:
                return None
            if code == AUTH_CLEARTEXT and self.password is not None:
                reply = self.password + b"\0"
            elif code == AUTH_MD5 and (self.password is not None or self._md5_verifier()):
                verifier = self._md5_verifier() or md5_verifier(self.password or b"", self.user)
                reply = wire.cstring(md5_response(verifier, data[:4]))
            elif code == AUTH_SASL and SCRAM.encode() in data.split(b"\0"):
                scram = ScramClient(self.password, ScramSecret.parse(self.verifier or ""),
                                    self.client_key)
                reply = scram.initial_response()
            elif code == AUTH_SASL_CONTINUE and scram is not None:
                reply = scram.on_server_first(data)
            elif code == AUTH_SASL_FINAL and scram is not None:
                scram.check_server_final(data)
                reply = b""
            else:
                raise InvalidAuthorization(
                    f"Fig cannot answer the hot PostgreSQL's authentication request {code}")
            if reply:
                backend.writer.write(wire.message(b"p", reply))
            kind, payload = await backend.read_message()
            if kind == b"E":
                return payload
            if kind != b"R":
                raise ProtocolViolation("unexpected message during backend authentication")

    def _md5_verifier(self) -> str | None:
        if self.verifier and self.verifier.startswith("md5"):
            return self.verifier
        return None


# -- the exchange with the client -------------------------------------------------------------

class ClientChannel(Protocol):
    """The client side of a connection during startup."""

    writer: asyncio.StreamWriter

    async def read_client_message(self) -> tuple[int, bytes]: ...


def _request(code: int, data: bytes = b"") -> bytes:
    return wire.message(b"R", wire.INT32.pack(code) + data)


async def _read_password_message(channel: ClientChannel) -> bytes:
    await channel.writer.drain()
    kind, payload = await channel.read_client_message()
    if kind != ord("p"):
        raise ProtocolViolation(f"expected password response, got message type {kind}")
    return payload


class Authenticator:
    """Checks clients for one method against pg_authid, read through the RoleDirectory."""

    def __init__(self, method: str, roles: RoleDirectory) -> None:
        if method not in METHODS or method == "trust":
            raise ValueError(f"unsupported authentication method {method!r}")
        self.method = method
        self.roles = roles
        # Mock salts for unknown roles stay the same per role while Fig runs, so probing
        # twice does not tell a missing role from a real one.
        self._mock_key = secrets.token_bytes(32)

    def _mock_secret(self, user: str) -> ScramSecret:
        salt = _hmac(self._mock_key, user.encode())[:16]
        return ScramSecret(SCRAM_ITERATIONS, salt, secrets.token_bytes(32),
                           secrets.token_bytes(32))

    async def authenticate(self, channel: ClientChannel, user: str) -> BackendCredentials:
        """Run the exchange; InvalidPassword (28P01) whatever the reason it fails."""
        secret = await self.roles.secret(user)
        try:
            return await self._exchange(channel, user, secret)
        except AuthFailed:
            raise InvalidPassword(f'password authentication failed for user "{user}"') from None

    async def _exchange(self, channel: ClientChannel, user: str,
                        secret: RoleSecret | None) -> BackendCredentials:
        verifier = secret.verifier if secret is not None else None
        usable = secret is not None and verifier is not None and not secret.expired
        scram = ScramSecret.parse(verifier or "")
        method = self.method
        if method == "md5" and scram is not None:
            method = "scram-sha-256"  # as Postgres: an md5 rule with a SCRAM secret uses SCRAM
        if method == "password":
            channel.writer.write(_request(AUTH_CLEARTEXT))
            password = (await _read_password_message(channel)).split(b"\0", 1)[0]
            ok = await asyncio.to_thread(check_password, password, user, verifier)
            if not (ok and usable):
                raise AuthFailed
            self._ok(channel)
            return BackendCredentials(user, password=password, verifier=verifier)
        if method == "md5":
            salt = secrets.token_bytes(4)
            channel.writer.write(_request(AUTH_MD5, salt))
            answer = (await _read_password_message(channel)).split(b"\0", 1)[0]
            expected = md5_response(verifier, salt).encode() if verifier else b"-"
            if not (hmac.compare_digest(answer, expected) and usable):
                raise AuthFailed
            self._ok(channel)
            return BackendCredentials(user, verifier=verifier)
        server = ScramServer(scram or self._mock_secret(user), scram is not None and usable)
        await self._scram(channel, server)
        self._ok(channel)
        return BackendCredentials(user, verifier=verifier, client_key=server.client_key)

    async def _scram(self, channel: ClientChannel, server: ScramServer) -> None:
        channel.writer.write(_request(AUTH_SASL, wire.cstring(SCRAM) + b"\0"))
        payload = await _read_password_message(channel)
        mechanism, _, rest = payload.partition(b"\0")
        if mechanism.decode(errors="replace") != SCRAM or len(rest) < 4:
            raise ProtocolViolation("client selected an invalid SASL authentication mechanism")
        length = wire.INT32.unpack_from(rest)[0]
        if length != len(rest) - 4:
            raise ProtocolViolation("malformed SASLInitialResponse")
        try:
            first = server.on_client_first(rest[4:])
            channel.writer.write(_request(AUTH_SASL_CONTINUE, first))
            final = server.on_client_final(await _read_password_message(channel))
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("malformed SCRAM message") from exc
        channel.writer.write(_request(AUTH_SASL_FINAL, final))

    @staticmethod
    def _ok(channel: ClientChannel) -> None:
        channel.writer.write(_request(AUTH_OK))

