"""TLS certificates the processes show: the gate API's own, read again when
it is renewed, and the expiry of each exported, so that a certificate is
replaced before it stops the gates or the workers."""
from __future__ import annotations

import base64
import binascii
import logging
import re
import ssl
import time
from typing import Any, Callable

from config.settings import certificate_load_problem
from streams.auth import WatchedFile, warn_if_shared
from topics import xmlsig

log = logging.getLogger("clearance.tls")

_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
_PEM_CRL = re.compile(r"-----BEGIN X509 CRL-----([A-Za-z0-9+/=\s]+?)-----END X509 CRL-----")


def _der(block: str) -> bytes:
    try:
        return base64.b64decode("".join(block.split()), validate=True)
    except binascii.Error:
        raise ValueError("not Base64") from None


def crl_next_update(pem: str) -> float:
    """When the first of the CRLs in a PEM text is due to be replaced (Unix
    time; inf when none names a nextUpdate). ValueError when the text holds
    no CRL or anything else (a certificate there would be trusted as a CA)."""
    crls = _PEM_CRL.findall(pem)
    if not crls:
        raise ValueError("holds no PEM X509 CRL")
    if "-----BEGIN" in _PEM_CRL.sub("", pem):
        raise ValueError("holds something besides CRLs (a certificate there would be trusted)")
    due = [xmlsig.crl_next_update(_der(block)) for block in crls]
    return min((d.timestamp() for d in due if d is not None), default=float("inf"))


def expiry(pem: str) -> float:
    """When the first certificate of a PEM text (the leaf of a chain) expires,
    as Unix time; ValueError when there is none that reads."""
    found = _PEM_CERTIFICATE.search(pem)
    if not found:
        raise ValueError("holds no PEM certificate")
    return xmlsig.certificate_validity(_der(found.group(1)))[1].timestamp()


def export_expiry(gauge: Any, certificate: str, path: str) -> None:
    """Set `gauge{certificate=...}` to the expiry of the certificate in
    `path`. A certificate the start accepted (config/settings.py loaded it)
    that this reader cannot read only goes without its gauge."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            gauge.labels(certificate).set(expiry(f.read()))
    except (OSError, ValueError) as exc:
        log.warning("expiry of %s certificate %s not exported: %s", certificate, path, exc)


class ServerCertificate:
    """The gate API's TLS (CLEARANCE_GATE_TLS_*): a context made again when
    its certificate, key, client CA or the CA's revocation list changes
    (looked at once a second, on connections), so a certificate renewed on
    disk (cert-manager, certbot, a Kubernetes secret) is served without a
    restart. A change that does
    not load (the new certificate beside the old key, a wrong password, not
    PEM) is refused: the context before it goes on serving, the refusal is
    logged once, and `on_reload(False)` is told; when the rest of the change
    arrives it loads. Connections already open keep the certificate they
    were made with."""

    def __init__(self, certfile: str, keyfile: str = "", password: str = "", client_ca: str = "",
                 on_reload: Callable[[bool], Any] | None = None, expiry_gauge: Any = None,
                 check_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic, crl: str = "",
                 crl_gauge: Any = None):
        self.certfile, self.keyfile, self.password, self.client_ca = certfile, keyfile, password, client_ca
        self.crl, self.expiry_gauge, self.crl_gauge = crl, expiry_gauge, crl_gauge
        # A client CA set means a gate may show a certificate it issued.
        self.verifies_clients = bool(client_ca)
        self.files = WatchedFile("CLEARANCE_GATE_TLS_CERTFILE", certfile, self._load, check_every_s, clock,
                                 on_reload, also=(keyfile, client_ca, crl), secret=False)

    def context(self) -> ssl.SSLContext:
        """The context in force now, for the next connection."""
        ctx: ssl.SSLContext = self.files.value()
        return ctx

    def _load(self, pem: str) -> ssl.SSLContext:
        warn_if_shared("CLEARANCE_GATE_TLS_KEYFILE", self.keyfile or self.certfile)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        files = (f"CLEARANCE_GATE_TLS_CERTFILE {self.certfile}, KEYFILE {self.keyfile or '-'}, "
                 f"CLIENT_CA {self.client_ca or '-'}, CRL {self.crl or '-'}")
        try:
            # "" and not None when no password is set: OpenSSL would ask a terminal.
            ctx.load_cert_chain(self.certfile, self.keyfile or None, self.password)
        except ssl.SSLError as exc:
            raise ValueError(f"{files}: {certificate_load_problem(exc, 'CLEARANCE_GATE_TLS')}") from None
        except OSError as exc:
            raise ValueError(f"{files}: {exc.strerror or exc}") from None
        try:
            if self.client_ca:
                ctx.load_verify_locations(self.client_ca)
                # Optional: scrapes, probes and token holders come without one;
                # a certificate of another CA fails the handshake.
                ctx.verify_mode = ssl.CERT_OPTIONAL
            next_update = None
            if self.crl:
                with open(self.crl, encoding="ascii", errors="replace") as f:
                    next_update = crl_next_update(f.read())
                # A gate certificate its CA revoked (a lost scanner) fails the
                # handshake; so does every one once the CRL is past its
                # nextUpdate, as OpenSSL will not trust a stale list.
                ctx.load_verify_locations(self.crl)
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        except (ssl.SSLError, OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ValueError(f"{files}: {why}") from None
        if self.crl_gauge is not None and next_update is not None:
            self.crl_gauge.set(next_update)
        if self.expiry_gauge is not None:
            try:
                self.expiry_gauge.labels("gate_api").set(expiry(pem))
            except ValueError as exc:
                log.warning("expiry of the gate API's certificate not exported: %s", exc)
        return ctx
