"""A real libvirtd reads the files we converge, in both modes, and the post-apply check sees it.

libvirtd (Debian's libvirt-daemon) runs in a network namespace of its own and a private
mount namespace: tmpfs over /run and /var, the converged root's /etc/libvirt bound over
/etc/libvirt, and passwd/group copies that add the ``libvirt-qemu`` user its QEMU driver
insists on (libvirt-daemon-system would create it). Nothing of the machine changes, and the
daemon is stopped with the test. It starts with the arguments our apply wrote into the
root's /etc/default/libvirtd. In TLS mode its certificates are the test's (CloudStack
provisions them when it adds a host); those keys are not ours, so they are no drift.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.agent.checks import libvirt_listening
from bootstrap.converge import converge, plan_host
from bootstrap.host.root import HostRoot
from bootstrap.model import validate_spec
from bootstrap.model.spec import Spec
from bootstrap.resources.conffile import shell_words, values
from simulator.namespaces import Namespace

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        shutil.which("libvirtd") is None or shutil.which("openssl") is None,
        reason="needs libvirtd (Debian's libvirt-daemon) and openssl",
    ),
]

EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:kvm1\n"
)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificates(d: Path) -> dict[str, str]:
    """A CA and a server certificate it signed, as libvirtd's TLS context requires."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2",
        "-subj", "/CN=csboot test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", *ec, "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr", "-subj", "/CN=kvm1"
    )
    (d / "ext.cnf").write_text(EXT)
    openssl(
        "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
        "-CAcreateserial", "-out", f"{d}/server.pem", "-days", "2", "-extfile", f"{d}/ext.cnf",
    )  # fmt: skip
    return {
        "key_file": f'"{d}/server.key"',
        "cert_file": f'"{d}/server.pem"',
        "ca_file": f'"{d}/ca.pem"',
    }


def converged_root(root: Path, spec: Spec) -> HostRoot:
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/libvirt/libvirtd.conf").write_text("#listen_tls = 0\n#listen_tcp = 1\n")
    (root / "etc/default").mkdir()
    (root / "etc/default/libvirtd").write_text('# options for libvirtd\nLIBVIRTD_ARGS=""\n')
    host = HostRoot(root)
    _plan, outcome = asyncio.run(converge(spec, host))
    assert outcome.ok, outcome.error
    return host


def libvirtd_args(root: Path) -> list[str]:
    """What the daemon's defaults file says, as systemd's ``$LIBVIRTD_ARGS`` expands it."""
    (token,) = values((root / "etc/default/libvirtd").read_text())["LIBVIRTD_ARGS"]
    return shell_words(token)


@pytest.fixture
def libvirtd(make_ns: Callable[[str], Namespace], tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(root: Path) -> Namespace:
        ns = make_ns("lv")
        passwd, group = tmp_path / "passwd", tmp_path / "group"
        passwd.write_text(
            Path("/etc/passwd").read_text()
            + "libvirt-qemu:x:64055:64055:libvirt (test):/var/lib/libvirt:/usr/sbin/nologin\n"
        )
        group.write_text(Path("/etc/group").read_text() + "libvirt-qemu:x:64055:\n")
        args = " ".join(libvirtd_args(root))
        script = (
            # /etc/libvirt may not exist here (libvirt-daemon without -system): an overlay
            # on /etc, private to this mount namespace, gives it a mount point
            "mount -t tmpfs csboot /run && mkdir -p /run/etc/upper /run/etc/work && "
            "mount -t overlay csboot -o lowerdir=/etc,upperdir=/run/etc/upper,"
            "workdir=/run/etc/work /etc && mkdir -p /etc/libvirt && "
            "mount -t tmpfs csboot /var && mkdir -p /var/lib /var/cache /var/log && "
            f"mount --bind {root}/etc/libvirt /etc/libvirt && "
            f"mount --bind {passwd} /etc/passwd && mount --bind {group} /etc/group && "
            f"exec libvirtd {args} --config /etc/libvirt/libvirtd.conf"
        )
        log = (tmp_path / "libvirtd.log").open("wb")
        started.append(
            ns.popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return ns

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def check(ns: Namespace, spec: Spec, window: float) -> tuple[bool, str]:
    with ns.entered():
        result = asyncio.run(libvirt_listening(spec, window))
    return result.ok, result.detail


def test_tls_mode_a_real_libvirtd_listens_on_tls(tmp_path: Path, libvirtd: Any) -> None:
    spec = validate_spec({"libvirt": {"mode": "tls"}})
    root = tmp_path / "host"
    host = converged_root(root, spec)
    assert libvirtd_args(root) == ["--listen"]
    conf = root / "etc/libvirt/libvirtd.conf"  # CloudStack's certificates arrive
    certs = certificates(tmp_path)
    conf.write_text(conf.read_text() + "".join(f"{k} = {v}\n" for k, v in certs.items()))
    assert not asyncio.run(plan_host(spec, host))  # not ours: no drift

    ns = libvirtd(root)
    assert check(ns, spec, 30) == (True, "tls 16514")
    tcp = validate_spec({"libvirt": {"mode": "tcp"}})
    ok, detail = check(ns, tcp, 0.5)  # listen_tcp = 0: nothing on 16509
    assert not ok and detail == "tcp 16509: nothing listens"


def test_tcp_mode_a_real_libvirtd_listens_on_tcp(tmp_path: Path, libvirtd: Any) -> None:
    spec = validate_spec({"libvirt": {"mode": "tcp", "tcp_port": 16600}})
    root = tmp_path / "host"
    converged_root(root, spec)
    assert libvirtd_args(root) == ["--listen"]

    ns = libvirtd(root)
    assert check(ns, spec, 30) == (True, "tcp 16600")
    tls = validate_spec({"libvirt": {"mode": "tls"}})
    ok, detail = check(ns, tls, 0.5)  # listen_tls = 0: nothing on 16514
    assert not ok and detail == "tls 16514: nothing listens"
