"""What the agent's hot paths import, and the status watcher's pipe (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from simulator.rollout import _statuses


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_netlink_classes_come_without_pyroute2s_whole_package() -> None:
    out = _python(
        "import sys, bootstrap.netlink as n\n"
        "print(n.AsyncIPRoute.__module__, 'pyroute2.ndb.main' in sys.modules,"
        " 'pyroute2.netlink.nl80211' in sys.modules)\n"
        "from pyroute2 import NDB, IPRoute\n"  # the rest of a process sees the whole package
        "print(NDB.__module__, IPRoute is n.IPRoute)"
    )
    assert out.splitlines() == ["pyroute2.iproute.linux False False", "pyroute2.ndb.main True"]


def test_the_cloudstack_checks_listening_ports_keep_pyroute2s_package_away() -> None:
    """sock_diag's message classes only (a read of this namespace's sockets, nothing set):
    ``from pyroute2 import DiagSocket`` would bring the whole package, ~6 MiB, into every
    agent that runs its post-apply checks."""
    out = _python(
        "import sys\nfrom bootstrap.host.cloudstack import _listening\n"
        "ports = _listening()\n"
        "print(type(ports).__name__, 'pyroute2.ndb.main' in sys.modules)"
    )
    assert out == "frozenset False"


def test_an_already_imported_pyroute2_is_left_as_it_is() -> None:
    out = _python(
        "import pyroute2, sys\nfull = sys.modules['pyroute2']\n"
        "import bootstrap.netlink\nprint(sys.modules['pyroute2'] is full, hasattr(full, 'NDB'))"
    )
    assert out == "True True"


def test_the_ovsdb_client_parses_json_in_c() -> None:
    """Debian's python3-openvswitch, linked in by scripts/setup.sh: PyPI's pure-Python
    parser made every OVSDB connection ~3x dearer."""
    import ovs.json

    assert ovs.json.PARSER == ovs.json.PARSER_C


@dataclass
class _Broker:
    """Stands in for the broker's status subscription: lines now, then a quiet open pipe."""

    lines: list[str]

    def watch(self) -> subprocess.Popen[str]:
        text = "".join(f"{line}\n" for line in self.lines)
        return subprocess.Popen(
            ["sh", "-c", 'printf "%s" "$0"; exec sleep 60', text],
            stdout=subprocess.PIPE,
            text=True,
        )


def _line(host: str, state: str) -> str:
    return (
        f"cloudstack/bootstrap/v1/hosts/{host}/status "
        + json.dumps({"state": state}).encode().hex()
    )


def test_statuses_written_at_once_are_all_read_while_the_pipe_stays_open() -> None:
    """Three statuses in one write, then silence: each is seen at once. (A buffered
    readline after select left the last lines unread until the deadline.)"""
    broker: Any = _Broker([_line(h, "converged") for h in ("kvm1", "kvm2", "kvm3")])
    t0 = time.monotonic()
    seen = [
        host
        for host, _status in _statuses(broker, 3, t0 + 30, lambda _h, s: s["state"] == "converged")
    ]
    assert seen == ["kvm1", "kvm2", "kvm3"]
    assert time.monotonic() - t0 < 10


def test_a_hostile_status_line_is_skipped() -> None:
    broker: Any = _Broker(["garbage", "a/b/c/d zz", _line("kvm1", "converged")])
    t0 = time.monotonic()
    got = list(_statuses(broker, 1, t0 + 30, lambda _h, s: s.get("state") == "converged"))
    assert got == [("kvm1", {"state": "converged"})]


def test_the_resident_agent_holds_no_engine_and_no_yaml_parser() -> None:
    """The engine is imported by the workers the agent forks, not by the agent (issue 11:
    ~15 MiB it held between applies); YAML's parser (~1.7 MiB) by the first payload that
    is not JSON; ctypes (~0.3 MiB) by the worker alone."""
    code = (
        "import sys\nimport bootstrap.cli, bootstrap.agent.daemon\n"
        "from bootstrap.model.payload import decode\n"
        "decode(b'{\"a\": [1, 2]}')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'ovs',"
        " 'nftables', 'yaml', 'ctypes') or m.startswith(('bootstrap.resources.',"
        " 'bootstrap.converge'))))"
    )
    assert _python(code) == "[]"
    assert "yaml" in _python(code.replace("b'{", "b'a: {").replace("}')", "}\\n')"))


def test_a_warm_zygote_leaves_the_workers_first_apply_nothing_to_import(tmp_path: Any) -> None:
    """What the simulator's zygote imports before it forks agents (whose workers are forks
    of them) covers every module the resources of a full spec (Open vSwitch, firewall,
    persistence, host settings, files) come from: a rollout profile found ~9 % of an
    agent's CPU in imports (ufw, firewalld, persist, nftables) after an earlier
    hand-written list fell behind."""
    code = f"""
import sys, yaml
from pathlib import Path
import simulator.zygote
simulator.zygote._warm()
before = set(sys.modules)
# what the worker's jobs import (bootstrap.agent.worker: _converge, _plan, _recover)
from bootstrap.agent.checks import run_checks
from bootstrap.converge import Options, converge, plan_host, recover_host
from bootstrap.engine.probe import TcpProbe
from bootstrap.host.cloudstack import run_cloudstack_checks
from bootstrap.model.document import validate_spec
from bootstrap.host.root import HostRoot
from bootstrap.model.spec import Spec
from bootstrap.resources import resources_for
role = yaml.safe_load(open("nets/scale-100.yaml"))["desired"]["roles"]["kvm"]["spec"]
spec = Spec.model_validate({{**role, "host": {{"security_groups": True}}}})
assert spec.firewall is not None and spec.host is not None
from bootstrap.engine.resource import _adapter, prepare_adapters
prepare_adapters()
built = _adapter.cache_info().misses
for r in resources_for(spec, HostRoot(Path({str(tmp_path)!r}))):
    _adapter(type(r).state_type)  # what the apply's snapshots use
new = set(sys.modules) - before
print(sorted(m for m in new if m.split(".")[0] in ("bootstrap", "nftables", "ovs")))
print(built, _adapter.cache_info().misses)
"""
    imported, adapters = _python(code).splitlines()
    assert imported == "[]"
    built, after = map(int, adapters.split())
    assert built >= 5 and after == built  # no schema left to compile at the first apply


def test_the_agent_verifies_signatures_without_cryptography() -> None:
    """Ed25519 comes from libsodium (PyNaCl, ~1 MiB resident): ``cryptography`` (its own
    OpenSSL, Rust bindings, serialization) held ~13 MiB of a 63 MiB agent. Nothing the
    agent or its workers load may bring it back."""
    out = _python(
        "import sys\n"
        "import simulator.zygote\n"
        "simulator.zygote._warm()\n"
        "from bootstrap.model.signing import generate_key, load_public_key\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))"
    )
    assert out == "[]"


def test_the_resident_agent_holds_no_plugin_scan_no_http_client_and_no_shutil(
    tmp_path: Any,
) -> None:
    """pydantic's plugin discovery (``importlib.metadata``: 0.8 MiB), paho's
    ``urllib.request`` (http.client, the email parser, tempfile: 1.9 MiB) and ``shutil``
    (argparse's terminal width, ``tempfile``: 0.5 MiB) stay out of the agent, which builds
    and validates models, makes the CLI's parser and writes files atomically."""
    code = (
        "import sys\nfrom pathlib import Path\n"
        "import bootstrap.cli, bootstrap.agent.daemon\n"
        "bootstrap.cli.build_parser()\n"
        "from bootstrap.files import atomic_write\n"
        f"atomic_write(Path({str(tmp_path)!r}, 'f'), b'x')\n"
        "from bootstrap.agent.status import encode\n"
        "print(sorted(m for m in ('importlib.metadata', 'http.client', 'email.parser',"
        " 'tempfile', 'shutil') if m in sys.modules))\n"
        "import urllib.request\n"  # still the whole module to whoever uses it
        "print(urllib.request.Request.__name__, 'http.client' in sys.modules)\n"
        "from pydantic.plugin._loader import get_plugins\n"
        "print(list(get_plugins()))"
    )
    assert _python(code).splitlines() == ["[]", "Request True", "[]"]
    assert (tmp_path / "f").read_bytes() == b"x"


def test_a_module_registered_lazily_runs_at_its_first_name(tmp_path: Any) -> None:
    (tmp_path / "csboot_lazy_probe.py").write_text("print('ran')\nVALUE = 42\n")
    out = _python(
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "from bootstrap.lazy import register_lazily\n"
        "register_lazily('csboot_lazy_probe')\n"
        "import csboot_lazy_probe as m\nprint('imported')\n"
        "print(m.VALUE, m.VALUE)\n"
        "import csboot_lazy_probe as again\nprint(again is m)\n"
        "register_lazily('csboot_lazy_probe')\nprint(sys.modules['csboot_lazy_probe'] is m)\n"
        "register_lazily('csboot_no_such_module')\nprint('csboot_no_such_module' in sys.modules)"
    )
    assert out.splitlines() == ["imported", "ran", "42 42", "True", "True", "False"]
