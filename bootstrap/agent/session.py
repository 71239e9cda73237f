"""The agent's MQTT session: our own reconnect loop around aiomqtt.

Why our own loop: we need to re-create the client for every attempt (the will carries the
versions in force), try several brokers in turn, fall back from MQTT 5 to 3.1.1 when a
broker refuses the protocol *or closes the connection on an MQTT 5 CONNECT* (RabbitMQ
3.10's MQTT plugin speaks only 3.1.1 and does the latter), and resubscribe after every
reconnect. ``[mqtt] protocol`` pins "5" or "3.1.1" instead of "auto". The session is
persistent (fixed client id = host, clean start off), so QoS 1 messages published while
we were away are delivered; retained documents come again on every subscribe and the
daemon ignores what it has already seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bootstrap.lazy import register_lazily

# paho imports urllib.request, and with it http.client, the email parser, tempfile and
# shutil (1.9 MiB in the agent), for one use: a SOCKS proxy named in the environment,
# which it reads only when PySocks is installed. Its code runs if that ever happens.
register_lazily("urllib.request")

import aiomqtt  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from bootstrap.agent.config import AgentConfig, Broker  # noqa: E402
from bootstrap.agent.topics import Topics  # noqa: E402
from bootstrap.errors import ConfigError  # noqa: E402

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ConnectHandler = Callable[[], Awaitable[None]]
WillFactory = Callable[[], bytes]

UNSUPPORTED_PROTOCOL = (1, 132)  # MQTT 3.1.1 CONNACK rc / MQTT 5 reason code
NOT_AUTHORIZED = (4, 5, 134, 135)  # bad credentials / not authorised: no fallback helps
PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
DISCONNECT_WAIT = 5.0
"""How long a graceful disconnect may wait for paho to send DISCONNECT and close; a broker
that froze or a socket paho lost track of would otherwise hold a stop forever."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays with full jitter in [d/2, d]: a fleet does not reconnect in step."""

    initial: float
    maximum: float

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * (2 ** min(attempt, 30)))
        return random.uniform(base / 2, base)


def tls_context(config: AgentConfig) -> ssl.SSLContext:
    tls = config.tls
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca) if tls and tls.ca else None)
        if tls is not None and tls.cert is not None and tls.key is not None:
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificates: {exc}") from exc
    return ctx


def _rc(exc: BaseException) -> int | None:
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return None
    rc = exc.rc
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def is_protocol_refusal(exc: BaseException) -> bool:
    return _rc(exc) in UNSUPPORTED_PROTOCOL


def may_fall_back(exc: BaseException) -> bool:
    """An MQTT 5 CONNECT that failed for a reason MQTT 3.1.1 might not: an explicit
    protocol refusal, or the connection closed / timed out without a CONNACK."""
    return _rc(exc) not in NOT_AUTHORIZED


class _ClosedOnConnect(aiomqtt.MqttError):
    def __init__(self) -> None:
        super().__init__("the broker closed the connection before its CONNACK")


class _Client(aiomqtt.Client):
    """aiomqtt's client, but a connection the broker closes before its CONNACK fails the
    connect at once (aiomqtt ignores that disconnect and waits for its timeout): RabbitMQ
    3.10 answers an MQTT 5 CONNECT so, and ``auto`` should fall back now, not in 10 s.

    paho may call back from the connect's executor thread: the future is failed on the
    event loop (``call_soon_threadsafe``), and only while this client is connecting.
    """

    _connecting = False

    async def __aenter__(self) -> _Client:
        self._connecting = True
        self._owner = asyncio.get_running_loop()
        try:
            await super().__aenter__()
        finally:
            self._connecting = False
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """aiomqtt's graceful disconnect, bounded: it waits for paho's disconnect callback
        without a limit, and that callback never comes when the DISCONNECT cannot be
        written (a frozen broker with a full window, a write registration paho believes
        pending). After :data:`DISCONNECT_WAIT` the socket is closed instead: the broker
        sees a lost connection (our will, which is what happened), and we go on."""
        try:
            async with asyncio.timeout(DISCONNECT_WAIT):
                await super().__aexit__(*exc)
        except TimeoutError:
            log.warning("no clean disconnect within %gs: closing the connection", DISCONNECT_WAIT)
            with contextlib.suppress(Exception):
                self._client._sock_close()  # paho: unregisters reader and writer, closes
            if not self._disconnected.done():
                self._disconnected.set_result(None)
            if self._lock.locked():
                self._lock.release()

    def _fail_connect(self, connected: asyncio.Future[Any]) -> None:
        if self._connecting and not connected.done():
            connected.set_exception(_ClosedOnConnect())

    def _on_disconnect(self, client: Any, userdata: Any, *args: Any, **kwargs: Any) -> None:
        connected: asyncio.Future[Any] = self._connected
        if self._connecting and not connected.done():
            self._owner.call_soon_threadsafe(self._fail_connect, connected)
            return
        super()._on_disconnect(client, userdata, *args, **kwargs)


class Session:
    """Keeps one connection alive across broker restarts and failovers.

    An async context manager over the caller's :class:`asyncio.TaskGroup` (the agent's):
    ``async with session.within(group):`` runs the reconnect loop as the named task
    ``mqtt-session`` in that group; leaving the block cancels it (a clean disconnect).
    """

    def __init__(
        self,
        config: AgentConfig,
        topics: Topics,
        *,
        will: WillFactory,
        on_message: MessageHandler,
        on_connect: ConnectHandler,
    ) -> None:
        self.config = config
        self.topics = topics
        self._will = will
        self._on_message = on_message
        self._on_connect = on_connect
        self._tls = tls_context(config) if any(b.tls for b in config.brokers) else None
        self._backoff = Backoff(config.reconnect.initial, config.reconnect.max)
        pinned = PROTOCOLS.get(config.mqtt.protocol)
        self._pinned = pinned
        self._protocol: dict[Broker, aiomqtt.ProtocolVersion] = {}
        self._client: aiomqtt.Client | None = None
        self.broker: Broker | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self._renew = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    def within(self, group: asyncio.TaskGroup) -> Session:
        self._group = group
        return self

    async def __aenter__(self) -> Session:
        if self._group is None:
            raise RuntimeError("Session.within(group) first: the session runs in its owner's group")
        self._task = self._group.create_task(self.run(), name="mqtt-session")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _client_for(self, broker: Broker, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        auth = self.config.auth
        will = aiomqtt.Will(self.topics.status, self._will(), qos=1, retain=True)
        v5 = protocol == aiomqtt.ProtocolVersion.V5
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.config.session_expiry
        return _Client(
            broker.host,
            broker.port,
            identifier=self.config.host,
            protocol=protocol,
            clean_session=None if v5 else False,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            will=will,
            username=auth.username if auth else None,
            password=auth.password() if auth else None,
            tls_context=self._tls if broker.tls else None,
            keepalive=self.config.keepalive,
            timeout=10,
        )

    def protocol_of(self, broker: Broker) -> aiomqtt.ProtocolVersion:
        return self._pinned or self._protocol.get(broker, aiomqtt.ProtocolVersion.V5)

    async def _connect(self, stack: contextlib.AsyncExitStack, broker: Broker) -> aiomqtt.Client:
        """The pinned protocol; with "auto", MQTT 5 first and 3.1.1 when the broker refuses
        MQTT 5 or drops the connection on its CONNECT (remembered per broker)."""
        protocol = self.protocol_of(broker)
        try:
            return await stack.enter_async_context(self._client_for(broker, protocol))
        except aiomqtt.MqttError as exc:
            if self._pinned or protocol != aiomqtt.ProtocolVersion.V5 or not may_fall_back(exc):
                raise
            first = exc
        try:
            client = await stack.enter_async_context(
                self._client_for(broker, aiomqtt.ProtocolVersion.V311)
            )
        except aiomqtt.MqttError:
            raise first from None  # 3.1.1 did not help either: the broker is down or refuses us
        if is_protocol_refusal(first) or isinstance(first, _ClosedOnConnect):
            log.warning("%s does not take MQTT 5 (%s); using MQTT 3.1.1", broker.url, first)
            self._protocol[broker] = aiomqtt.ProtocolVersion.V311
        else:  # a timeout may be a busy broker: MQTT 5 is tried again next time
            log.warning("%s: MQTT 5 failed (%s); connected with MQTT 3.1.1", broker.url, first)
        return client

    async def _serve(self, broker: Broker) -> None:
        """One connection: subscribe, report, deliver messages; returns on :meth:`renew`."""
        async with contextlib.AsyncExitStack() as stack:
            client = await self._connect(stack, broker)
            self._client, self.broker = client, broker
            self.connects += 1
            self._renew.clear()
            try:
                for topic in self.topics.subscriptions:
                    granted = await client.subscribe(topic, qos=1)
                    if any(getattr(g, "value", g) >= 0x80 for g in granted):
                        log.error("broker refused the subscription to %s (ACL?)", topic)
                log.info("connected to %s, subscribed to %s", broker.url, self.topics.subscriptions)
                self.connected.set()
                await self._on_connect()
                deliver = asyncio.create_task(self._deliver(client), name="mqtt-deliver")
                renew = asyncio.create_task(self._renew.wait(), name="mqtt-renew")
                try:
                    await asyncio.wait({deliver, renew}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    renew.cancel()
                    deliver.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await deliver  # re-raises the MqttError of a lost connection
            finally:
                self.connected.clear()
                self._client = None
                # A QoS 1 publish still waiting for its PUBACK would wait forever on a
                # closed connection: fail it, so the caller can retry on the next one.
                for task in list(self._inflight):
                    task.cancel()

    async def _deliver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = payload if isinstance(payload, bytes | bytearray) else b""
            try:
                await self._on_message(message.topic.value, bytes(data))
            except Exception:  # the handler is total; never let a message end the session
                log.exception("message handler failed on %s", message.topic.value)

    def renew(self) -> None:
        """Reconnect gracefully (no will fired) so the will carries the versions now in force."""
        self._renew.set()

    async def run(self) -> None:
        """Connect, serve, and reconnect with growing jittered delays; never returns."""
        brokers = list(self.config.brokers)
        index = 0
        attempt = 0
        while True:
            broker = brokers[index % len(brokers)]
            connects = self.connects
            try:
                await self._serve(broker)
                continue  # renewed on purpose: straight back to the same broker
            except (aiomqtt.MqttError, ConfigError) as exc:
                log.warning("broker %s: %s", broker.url, exc or type(exc).__name__)
            except Exception:  # whatever the broker or the library does: keep reconnecting
                log.exception("broker %s: unexpected error", broker.url)
            if self.connects != connects:
                attempt = 0  # we were connected: start the backoff afresh, same broker first
            else:
                index += 1  # could not connect: the next broker in turn
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.debug("reconnecting in %.2fs", delay)
            await asyncio.sleep(delay)

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> bool:
        """QoS 1; False when not connected or the connection closed before the PUBACK."""
        client = self._client
        if client is None:
            return False
        task = asyncio.create_task(client.publish(topic, payload, qos=1, retain=retain))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are cancelled ourselves, not the publish by a closed connection
            return False
        except aiomqtt.MqttError as exc:
            log.debug("publish to %s failed: %s", topic, exc)
            return False
        return True
