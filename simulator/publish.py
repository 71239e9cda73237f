"""Publish a batch of retained QoS 1 messages over one MQTT connection, then exit.

    publish.py HOST PORT USER PASSWORD OUTBOX.json    (OUTBOX: [{"topic", "payload"}, ...])

Run by path inside the broker namespace (see :meth:`BrokerHandle.publish`); it imports only
paho, so it starts quickly even in a slow VM. Exit 0 once the broker acknowledged every
message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion


def main(argv: list[str]) -> int:
    host, port, user, password, outbox = argv
    messages = json.loads(Path(outbox).read_text())
    client = Client(CallbackAPIVersion.VERSION2, client_id="csboot-sim-publisher")
    client.username_pw_set(user, password)
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [
            client.publish(m["topic"], json.dumps(m["payload"]), qos=1, retain=True)
            for m in messages
        ]
        for info in infos:
            info.wait_for_publish(timeout=30)
            if not info.is_published():
                print(f"not acknowledged: mid {info.mid}", file=sys.stderr)
                return 1
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
