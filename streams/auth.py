"""Bearer tokens for the worker's /trace and /metrics and the gate API (one shared, or one per gate)."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import threading
import time
from typing import Any, Callable, Mapping

log = logging.getLogger("clearance.auth")


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>`. Compared in
    constant time, so the time of a refusal says nothing about how much of a
    guess was right; as bytes, since a header may hold any character."""
    expected = f"Bearer {token}".encode("utf-8", "surrogateescape")
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected)


def gate_tokens(spec: str, source: str = "CLEARANCE_GATE_TOKENS") -> dict[str, str]:
    """`GATE=TOKEN` entries, separated by commas or lines (`#` starts a
    comment line), as {token: gate}: each gate its own tokens, so a gate can
    record exits in its own name only. A gate may be named more than once: its
    old and new token while it changes from one to the other. A token of two
    gates is refused (either could act as the other). Errors name the entry,
    never its token."""
    out: dict[str, str] = {}
    entries = (part for line in spec.splitlines() if not line.lstrip().startswith("#") for part in line.split(","))
    for n, part in enumerate((p for p in entries if p.strip()), 1):
        gate, sep, token = part.partition("=")
        gate, token = gate.strip(), token.strip()
        if not sep or not gate or not token:
            raise ValueError(f"{source}: entry {n} is not GATE=TOKEN")
        if out.get(token, gate) != gate:
            raise ValueError(f"{source}: gates {out[token]!r} and {gate!r} share a token (one could act as the other)")
        out[token] = gate
    return out


def token_digests(tokens: Mapping[str, str]) -> dict[bytes, str]:
    """{token: gate} as {SHA-256 of the token: gate}, for bearer_gate."""
    return {hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest(): gate for token, gate in tokens.items()}


def bearer_gate(authorization: str | None, digests: Mapping[bytes, str]) -> str | None:
    """The gate whose token the header carries (`Bearer <token>`), None if
    none's. Looked up by the token's digest: one lookup whatever the number of
    gates, and its time says nothing about how much of a guess was right (the
    digest of a guess shares nothing with the digest of the token it nears)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return digests.get(hashlib.sha256(authorization[7:].encode("utf-8", "surrogateescape")).digest())


def warn_if_shared(source: str, path: str, mode: int | None = None) -> None:
    """Log a warning when a file of secrets may be read by others than its owner."""
    if mode is None:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s can be read by others than its owner (mode %o)", source, path, stat.S_IMODE(mode))


class WatchedFile:
    """A file of secrets read again when it changes: its inode, mtime or size,
    looked at once a second at most, so a secret is replaced without a
    restart. `parse` turns its text into the value in force (ValueError when
    it does not read). A change that does not read (malformed, unreadable,
    gone) is refused, logged once (naming the file, never a secret), and the
    value before it stays in force; a file that cannot be read at start stops
    the start (ValueError). `on_reload(ok)` is told of every refusal and of
    every change read after one. `also`: files read with it (a certificate's
    key), whose change alone also has it read again. `secret`: warn when
    others than its owner may read it (not for a certificate)."""

    def __init__(self, source: str, path: str, parse: Callable[[str], Any], check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, on_reload: Callable[[bool], Any] | None = None,
                 also: tuple[str, ...] = (), secret: bool = True):
        self.source, self.path, self.parse, self.secret = source, path, parse, secret
        self.paths = (path, *(p for p in also if p))
        self.check_every_s, self.clock, self.on_reload = check_every_s, clock, on_reload
        self.lock = threading.Lock()
        self.refused: tuple[int, ...] | None = None  # the file as it was last refused
        self.next_check = 0.0
        self.seen = self._signature()  # the file as the value in force was read
        self.current = self._read()

    def value(self) -> Any:
        """The value in force now."""
        if self.clock() >= self.next_check and self.lock.acquire(blocking=False):
            try:  # one thread looks; the others use the value in force meanwhile
                self.next_check = self.clock() + self.check_every_s
                self._reload()
            finally:
                self.lock.release()
        return self.current

    def _signature(self) -> tuple[int, ...]:
        out: tuple[int, ...] = ()
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise ValueError(f"{self.source} {path}: {exc.strerror}") from None
            out += (st.st_ino, st.st_mtime_ns, st.st_size)
        return out

    def _read(self) -> Any:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
                mode = os.fstat(f.fileno()).st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.source} {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        if self.secret:
            warn_if_shared(self.source, self.path, mode)
        return self.parse(text)

    def _reload(self) -> None:
        signature: tuple[int, ...] = ()  # () while the file cannot be looked at
        try:
            signature = self._signature()
            if signature == self.seen or signature == self.refused:
                if signature == self.seen and self.refused is not None:  # back as it was in force
                    self._refused(None)
                return
            value = self._read()
        except ValueError as exc:
            if signature != self.refused:  # said once per change, not once a second
                log.error("%s; what was read before it stays in force", exc)
                self._refused(signature)
            return
        self.seen, self.current = signature, value
        self._refused(None)
        log.info("%s %s read again", self.source, self.path)

    def _refused(self, signature: tuple[int, ...] | None) -> None:
        self.refused = signature
        if self.on_reload:
            self.on_reload(signature is None)


class GateTokens:
    """The gates' own tokens: CLEARANCE_GATE_TOKENS, and the file
    CLEARANCE_GATE_TOKENS_FILE read again when it changes (WatchedFile), so a
    gate's token is replaced without a restart: add its new token, give it to
    the gate, remove the old. With a file named, a token is always required,
    even while it holds none: an emptied file must not open the API."""

    def __init__(self, spec: str = "", path: str = "", check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, on_reload: Callable[[bool], Any] | None = None):
        self.path = path
        self.fixed = gate_tokens(spec)
        self.file = WatchedFile("CLEARANCE_GATE_TOKENS_FILE", path, self._parse, check_every_s, clock,
                                on_reload) if path else None
        self.current = self.fixed
        self.digests = token_digests(self.current)
        self.tokens()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **kwargs: Any) -> "GateTokens":
        return cls(environ.get("CLEARANCE_GATE_TOKENS", ""), environ.get("CLEARANCE_GATE_TOKENS_FILE", ""), **kwargs)

    @property
    def required(self) -> bool:
        return bool(self.path or self.fixed)

    def gate_of(self, authorization: str | None) -> str | None:
        """The gate whose token in force the header carries (bearer_gate)."""
        self.tokens()
        return bearer_gate(authorization, self.digests)

    def tokens(self) -> dict[str, str]:
        """{token: gate} in force now."""
        if self.file is not None:
            tokens = self.file.value()
            if tokens is not self.current:
                self.current, self.digests = tokens, token_digests(tokens)
        return self.current

    def _parse(self, text: str) -> dict[str, str]:
        mine = gate_tokens(text, f"CLEARANCE_GATE_TOKENS_FILE {self.path}")
        clash = [t for t in mine.keys() & self.fixed.keys() if mine[t] != self.fixed[t]]
        if clash:
            raise ValueError(f"CLEARANCE_GATE_TOKENS_FILE {self.path}: gate {mine[clash[0]]!r} has a token "
                             f"CLEARANCE_GATE_TOKENS gives gate {self.fixed[clash[0]]!r}")
        if not mine and not self.fixed:
            log.warning("CLEARANCE_GATE_TOKENS_FILE %s holds no token: only the shared token, if any, is taken",
                        self.path)
        tokens = {**self.fixed, **mine}
        log.info("gate tokens from %s: %d gates, %d tokens", self.path, len(set(tokens.values())), len(tokens))
        return tokens


def shared_tokens(text: str, source: str) -> tuple[str, ...]:
    """A token file's tokens: one per line (`#` starts a comment line), so an
    old and a new token are both taken while clients change over. An empty
    file is refused: it must not open what the token guards."""
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise ValueError(f"{source}: holds no token")
    if any(any(c.isspace() for c in t) for t in tokens):
        raise ValueError(f"{source}: a token holds a space (one token per line)")
    return tokens


class SharedToken:
    """One of the tokens a whole endpoint takes (CLEARANCE_METRICS_TOKEN,
    CLEARANCE_HTTP_TOKEN, CLEARANCE_GATE_TOKEN): the variable itself, or the
    file its NAME_FILE names, read again when it changes (WatchedFile) and
    holding one token per line, so the token changes without a restart and
    without a moment when the old one is refused and the new not yet taken.
    Both set stops the start (ValueError)."""

    def __init__(self, name: str, environ: Mapping[str, str] = os.environ, **kwargs: Any):
        self.name, self.environ = name, environ
        path = environ.get(name + "_FILE", "")
        if path and environ.get(name, ""):
            raise ValueError(f"{name} and {name}_FILE are both set: set one")
        source = f"{name}_FILE"
        self.file = WatchedFile(source, path, lambda text: shared_tokens(text, f"{source} {path}"),
                                **kwargs) if path else None

    @property
    def required(self) -> bool:
        """Whether a token is set (without one the endpoint is open, or off)."""
        return self.file is not None or bool(self.environ.get(self.name, ""))

    def refresh(self) -> None:
        """Look at the file (once a second at most) without a request: a
        scrape keeps the files' gauge current while no client asks."""
        if self.file is not None:
            self.file.value()

    def accepts(self, authorization: str | None) -> bool:
        """Whether the header carries a token in force (bearer_ok, each in constant time)."""
        if self.file is None:
            token = self.environ.get(self.name, "")
            return bool(token) and bearer_ok(authorization, token)
        ok = False
        for token in self.file.value():  # every one compared: the time says not which matched
            ok |= bearer_ok(authorization, token)
        return ok


class FilesValid:
    """One gauge for all of a process's token files: 1 while each is in force
    as it is now, 0 while the last change of any was refused."""

    def __init__(self, gauge: Any) -> None:
        self.gauge, self.ok = gauge, {}
        gauge.set(1)  # read at start (else the start stopped): a gauge starts at 0, read as a refusal

    def watcher(self, source: str) -> Callable[[bool], None]:
        def on_reload(ok: bool) -> None:
            self.ok[source] = ok
            self.gauge.set(1 if all(self.ok.values()) else 0)
        return on_reload
