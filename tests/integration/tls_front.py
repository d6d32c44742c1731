"""A TLS listener in front of the embedded broker, as a Kafka cluster with a
TLS listener that authenticates clients by certificate looks to its clients:
it asks every client for a certificate of the given CA, refuses the
handshake without one, and forwards the Kafka protocol both ways unchanged.
The broker advertises the front's port, so no client reaches it in plain."""
from __future__ import annotations

import asyncio
import ssl

from tests.integration.fronted import Front


class TlsFront(Front):
    name = "TLS front"

    def __init__(self, upstream_port: int, certfile: str, keyfile: str, client_ca: str | None, port: int):
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(certfile, keyfile)
        if client_ca:  # without one, TLS alone (a SASL_SSL listener: the front behind it authenticates)
            self.tls.verify_mode = ssl.CERT_REQUIRED
            self.tls.load_verify_locations(client_ca)
        self.clients: list[str] = []  # the common name of each certificate a connection came with
        super().__init__(upstream_port, port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        self.clients.append(next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), ""))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self.pump(reader, up_writer), self.pump(up_reader, writer))
