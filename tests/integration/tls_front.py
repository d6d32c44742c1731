"""A TLS listener in front of the embedded broker, as a Kafka cluster with a
TLS listener that authenticates clients by certificate looks to its clients:
it asks every client for a certificate of the given CA, refuses the
handshake without one, and forwards the Kafka protocol both ways unchanged.
The broker advertises the front's port, so no client reaches it in plain."""
from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any


class TlsFront:
    def __init__(self, upstream_port: int, certfile: str, keyfile: str, client_ca: str | None, port: int):
        self.upstream_port, self.port = upstream_port, port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        if client_ca:  # without one, TLS alone (a SASL_SSL listener: the front behind it authenticates)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.clients: list[str] = []  # the common name of each certificate a connection came with
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("TLS front did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.ctx))
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        self.clients.append(next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), ""))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def stop(self) -> None:
        async def close() -> Any:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
