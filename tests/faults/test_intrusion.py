"""Issue 10, items 9 and 10: intrusion with one host's credentials, against a stock mosquitto.

The broker is configured only by what ``csboot broker-acl`` wrote (``include_dir`` of its
output, which defines the listener), started as root *without* ``user root``, so it drops
to user ``mosquitto`` before reading the password and ACL files, as a stock install does.
Every client is Debian's ``mosquitto_pub``/``mosquitto_sub``; an operator subscribed to the
whole prefix is the witness, and mosquitto's own log the other.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.broker import BrokerError, Mosquitto, free_port
from simulator.rollout import stop_watch
from tests.mqtt.conftest import CSBOOT, PREFIX

pytestmark = pytest.mark.mqtt

PASSWORDS = {
    "kvm1.lab": "kvm1-secret",
    "kvm2.lab": "kvm2-secret",
    "ops": "ops-secret",
    "witness": "witness-secret",  # client id = user name: one account per live connection
}
DENIED = "Not authorized"


@dataclass
class Served:
    broker: Mosquitto
    files: Path

    def base(self, user: str | None, password: str | None = None) -> list[str]:
        argv = ["-h", self.broker.host, "-p", str(self.broker.port), "-V", "5"]
        if user is not None:
            argv += ["-u", user, "-P", password or PASSWORDS[user]]
        return argv

    def pub(
        self, user: str, topic: str, payload: str, *extra: str, retain: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["mosquitto_pub", *self.base(user), "-q", "1", "-t", topic, "-m", payload, *extra]
        argv += ["-r"] if retain else []
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)

    def sub(
        self, user: str | None, *args: str, password: str | None = None
    ) -> subprocess.Popen[str]:
        argv = ["mosquitto_sub", *self.base(user, password), "-q", "1", *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def log(self) -> str:
        return self.broker.log_path.read_text()

    @contextlib.contextmanager
    def witness(self) -> Iterator[Callable[[], list[str]]]:
        """``topic payload`` lines the operator receives on the whole prefix while the block
        runs; starts once a marker proves the subscription is live."""
        out = self.broker.directory.parent / f"witness-{time.monotonic_ns()}"
        with out.open("w") as sink:
            proc = subprocess.Popen(
                ["mosquitto_sub", *self.base("witness"), "-q", "1", "-v", "-t", f"{PREFIX}/#"],
                stdout=sink,
                stderr=subprocess.DEVNULL,
            )

        def lines() -> list[str]:
            return out.read_text().splitlines()

        try:
            deadline = time.monotonic() + 10
            while not any("witness-marker" in line for line in lines()):
                assert time.monotonic() < deadline, "the witness never subscribed"
                self.pub("ops", f"{PREFIX}/marker", "witness-marker", retain=False)
                time.sleep(0.05)
            yield lines
        finally:
            stop_watch(proc)

    def barrier(self, lines: Callable[[], list[str]]) -> None:
        """Everything published before this has reached the witness."""
        token = f"barrier-{time.monotonic_ns()}"
        self.pub("ops", f"{PREFIX}/marker", token, retain=False)
        deadline = time.monotonic() + 10
        while not any(token in line for line in lines()):
            assert time.monotonic() < deadline, "the barrier never arrived"
            time.sleep(0.02)


def broker_acl(base: Path, port: int) -> Path:
    inventory = {
        "hosts": {
            "kvm1.lab": {"roles": ["kvm"], "password": PASSWORDS["kvm1.lab"]},
            "kvm2.lab": {"roles": ["kvm"], "password": PASSWORDS["kvm2.lab"]},
            "lxc1.lab": {"roles": ["lxc"]},
        },
        "operators": {
            "ops": {"password": PASSWORDS["ops"]},
            "witness": {"password": PASSWORDS["witness"]},
        },
    }
    (base / "inventory.json").write_text(json.dumps(inventory))
    out = base / "files"
    argv = [str(CSBOOT), "broker-acl", "--inventory", str(base / "inventory.json")]
    argv += ["--out", str(out), "--listener", f"127.0.0.1:{port}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    return out


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the broker's own user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="csboot-intrusion-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def served(base: Path) -> Iterator[Served]:
    port = free_port()
    files = broker_acl(base, port)
    broker = Mosquitto(
        base / "broker",
        port=port,
        drop_privileges=True,
        include_dir=files,
        allow_anonymous=False,
    )
    with broker:
        assert broker.uid() == pwd.getpwnam("mosquitto").pw_uid  # it dropped privileges
        yield Served(broker, files)


def test_a_stock_broker_runs_as_mosquitto_on_the_generated_files(served: Served) -> None:
    assert os.geteuid() == 0, "needs root: the broker must start as root and drop"
    assert "user root" not in served.broker.conf_path.read_text()
    assert served.broker.uid() == pwd.getpwnam("mosquitto").pw_uid
    group = grp.getgrnam("mosquitto").gr_gid
    for name in ("passwd", "acl"):
        st = (served.files / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, group, 0o640), name
    assert (served.files / "passwords").stat().st_mode & 0o777 == 0o700
    assert (served.files / "passwords" / "lxc1.lab").stat().st_mode & 0o777 == 0o600
    conf = (served.files / "mosquitto-auth.conf").read_text()
    assert "use_username_as_clientid true" in conf and "allow_anonymous false" in conf
    # accepts the right credentials, refuses wrong ones and anonymous clients
    assert served.pub("kvm1.lab", f"{PREFIX}/hosts/kvm1.lab/status", "mine").stderr == ""
    generated = (served.files / "passwords" / "lxc1.lab").read_text().strip()
    ok = served.pub("ops", f"{PREFIX}/roles/lxc/desired", "x")
    assert ok.returncode == 0 and ok.stderr == ""
    for user, password in (("kvm1.lab", "wrong"), ("lxc1.lab", generated + "x"), (None, None)):
        argv = ["mosquitto_pub", *served.base(user, password), "-t", f"{PREFIX}/x", "-m", "x"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode != 0 and "not authori" in done.stderr.lower(), (user, done)
    argv = ["mosquitto_pub", *served.base("lxc1.lab", generated), "-t", f"{PREFIX}/x", "-m", "x"]
    assert subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0


def test_root_only_files_stop_a_broker_that_drops_privileges(base: Path) -> None:
    """The control: with the old modes (root 0600) the same broker cannot start."""
    port = free_port()
    files = broker_acl(base, port)
    for name in ("passwd", "acl"):
        os.chown(files / name, 0, 0)
        (files / name).chmod(0o600)
    broker = Mosquitto(
        base / "broker", port=port, drop_privileges=True, include_dir=files, allow_anonymous=False
    )
    with pytest.raises(BrokerError, match=r"(?i)unable to open"):
        broker.start()
    broker.stop()


def test_one_hosts_credentials_cannot_take_over_or_kick_another_session(served: Served) -> None:
    kvm2_topic = f"{PREFIX}/hosts/kvm2.lab/desired"
    will = ["--will-topic", f"{PREFIX}/hosts/kvm2.lab/status", "--will-payload", "kvm2-will"]
    kvm2_args = ["-i", "kvm2.lab", "-c", "-t", kvm2_topic, *will, "--will-qos", "1"]
    with served.witness() as seen:
        # kvm2's persistent session, with a QoS 1 message queued while it is away
        kvm2 = served.sub("kvm2.lab", *kvm2_args, "-C", "1")
        assert served.pub("ops", kvm2_topic, "hello-kvm2").stderr == ""
        assert kvm2.communicate(timeout=10)[0].strip() == "hello-kvm2"
        assert served.pub("ops", kvm2_topic, "queued-for-kvm2", retain=False).stderr == ""

        # kvm1's credentials, client id kvm2.lab, clean start off: a session of its own
        impostor = served.sub(
            "kvm1.lab", "-i", "kvm2.lab", "-c", "-t", f"{PREFIX}/hosts/kvm1.lab/desired", "-W", "1"
        )
        got, _ = impostor.communicate(timeout=10)
        assert "queued-for-kvm2" not in got and "hello-kvm2" not in got
        log = served.log()
        assert "as kvm1.lab (p5, c0" in log and "u'kvm1.lab'" in log
        # kvm2's session was not taken: the queued message is still there for it
        kvm2 = served.sub("kvm2.lab", *kvm2_args, "-R", "-C", "2")  # -R: not the retained one
        deadline = time.monotonic() + 10
        while served.log().count("as kvm2.lab (p5, c0") < 2:
            assert time.monotonic() < deadline, "kvm2 never reconnected"
            time.sleep(0.02)

        # now, with kvm2 connected, the impostor again: kvm2 is not kicked off, no will
        impostor = served.sub(
            "kvm1.lab", "-i", "kvm2.lab", "-c", "-t", f"{PREFIX}/hosts/kvm1.lab/desired", "-W", "1"
        )
        impostor.communicate(timeout=10)
        assert served.pub("ops", kvm2_topic, "after-impostor", retain=False).stderr == ""
        out, _ = kvm2.communicate(timeout=10)
        assert out.splitlines() == ["queued-for-kvm2", "after-impostor"], out
        served.barrier(seen)
        log = served.log()
        assert "already connected, closing old connection" not in log, log
        assert served.log().count("as kvm2.lab (p5, c0") == 2  # kvm2 never had to reconnect
        assert not [line for line in seen() if "kvm2-will" in line]


FORBIDDEN_WRITES = [
    "hosts/kvm2.lab/status",  # another host's status (and its will topic)
    "hosts/kvm2.lab/events",
    "hosts/kvm2.lab/desired",  # another host's desired overlay
    "hosts/kvm1.lab/desired",  # even its own desired overlay
    "roles/kvm/desired",  # its own role's document
    "roles/lxc/desired",
    "rollouts/kvm",  # rollout state and lock
    "rollouts/kvm/sync/nonce",
    "rollouts/lxc",
    "hosts/kvm1.lab/other",
]
FORBIDDEN_READS = [
    "hosts/kvm2.lab/desired",
    "hosts/kvm2.lab/status",
    "roles/lxc/desired",
    "rollouts/kvm",
]


def test_one_hosts_credentials_reach_no_other_topic(served: Served) -> None:
    with served.witness() as seen:
        for i, topic in enumerate(FORBIDDEN_WRITES):
            done = served.pub("kvm1.lab", f"{PREFIX}/{topic}", f"forged-{i}")
            assert DENIED in done.stderr, (topic, done.stderr)
        done = served.pub("kvm1.lab", "elsewhere/topic", "forged-outside")
        assert DENIED in done.stderr
        # what it may do, so the refusals above are the ACL and not a broken client
        for topic in ("hosts/kvm1.lab/status", "hosts/kvm1.lab/events"):
            done = served.pub("kvm1.lab", f"{PREFIX}/{topic}", f"own-{topic}", retain=False)
            assert done.stderr == "", done.stderr
        served.barrier(seen)
        lines = seen()
        assert not [line for line in lines if "forged-" in line], lines
        assert any("own-hosts/kvm1.lab/status" in line for line in lines)
        assert any("own-hosts/kvm1.lab/events" in line for line in lines)

    # reads: retained secrets on others' topics never reach kvm1, whatever it subscribes
    for topic in FORBIDDEN_READS:
        assert served.pub("ops", f"{PREFIX}/{topic}", f"secret-{topic}").stderr == ""
    assert served.pub("ops", f"{PREFIX}/roles/kvm/desired", "for-kvm1").stderr == ""
    filters = [f"{PREFIX}/#", "#", *(f"{PREFIX}/{t}" for t in FORBIDDEN_READS)]
    reader = served.sub(
        "kvm1.lab", "-v", "--retained-only", "-W", "1", *(a for f in filters for a in ("-t", f))
    )
    got, _ = reader.communicate(timeout=10)
    assert f"{PREFIX}/roles/kvm/desired for-kvm1" in got  # the subscription works
    assert "secret-" not in got, got
