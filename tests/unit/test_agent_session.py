"""MQTT 5 -> 3.1.1 fallback and the CONNECT we send (persistent session, retained will).

mosquitto always speaks MQTT 5, so a 3.1.1-only broker is stood in for by a minimal
listener that answers a v5 CONNECT the way 3.1.1 brokers do: CONNACK rc=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt

from bootstrap.agent.config import parse_config
from bootstrap.agent.session import Session
from bootstrap.agent.topics import Topics


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return head >> 4, await reader.readexactly(length)


class V311Only:
    def __init__(self) -> None:
        self.connects: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await _read_packet(reader)
                if kind == 1:  # CONNECT
                    self.connects.append(body)
                    if body[6] != 4:
                        writer.write(b"\x20\x02\x00\x01")  # unacceptable protocol version
                        await writer.drain()
                        break
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 8:  # SUBSCRIBE -> SUBACK granting QoS 1
                    writer.write(bytes([0x90, 3]) + body[:2] + b"\x01")
                elif kind == 3:  # PUBLISH QoS 1 -> PUBACK
                    topic_len = int.from_bytes(body[:2], "big")
                    writer.write(b"\x40\x02" + body[2 + topic_len : 4 + topic_len])
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        writer.close()


async def test_falls_back_to_311_and_remembers(tmp_path: Path) -> None:
    stub = V311Only()
    server = await asyncio.start_server(stub.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = parse_config(
        {
            "broker": f"mqtt://127.0.0.1:{port}",
            "host": "kvm1.lab",
            "roles": ["kvm"],
            "root": str(tmp_path),
        }
    )
    connected = asyncio.Event()

    async def on_connect() -> None:
        connected.set()

    async def on_message(_topic: str, _payload: bytes) -> None:
        return None

    session = Session(
        config,
        Topics(config.prefix, config.host, config.roles),
        will=lambda: b'{"state":"offline"}',
        on_message=on_message,
        on_connect=on_connect,
    )
    runner = asyncio.create_task(session.run())
    try:
        async with asyncio.timeout(10):
            await connected.wait()
        assert [c[6] for c in stub.connects] == [5, 4]  # tried 5, then 3.1.1
        assert session._protocol[config.brokers[0]] == aiomqtt.ProtocolVersion.V311
        flags = stub.connects[1][7]
        assert not flags & 0x02  # clean session off: a persistent session
        assert flags & 0x04 and flags & 0x20 and (flags >> 3) & 3 == 1  # will, retained, QoS 1
        body = stub.connects[1]
        id_len = int.from_bytes(body[10:12], "big")
        assert body[12 : 12 + id_len] == b"kvm1.lab"  # stable client id = host
        will_topic_at = 12 + id_len
        will_len = int.from_bytes(body[will_topic_at : will_topic_at + 2], "big")
        topic = body[will_topic_at + 2 : will_topic_at + 2 + will_len].decode()
        assert topic == "cloudstack/bootstrap/v1/hosts/kvm1.lab/status"
        assert await session.publish("x/y", json.dumps({"a": 1}).encode(), retain=False)

        session.renew()  # a deliberate reconnect goes straight to 3.1.1
        async with asyncio.timeout(10):
            while len(stub.connects) < 3:  # noqa: ASYNC110 (polls the stub)
                await asyncio.sleep(0.02)
        assert [c[6] for c in stub.connects] == [5, 4, 4]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        server.close()
        await server.wait_closed()
