"""``csboot broker-acl``: a mosquitto ``acl_file`` and ``password_file`` from an inventory.

Least privilege per host: read its roles' desired topics and its own desired overlay,
write its own status (also read back) and events, nothing else. Operators read and write
the whole prefix (desired documents, rollout state, statuses). Anyone else: nothing
(mosquitto denies what no rule grants; anonymous clients are refused by the config
snippet written next to the files).

Passwords are hashed as mosquitto 2 does (``$7$``: PBKDF2-SHA512, 101 iterations,
12-byte salt), so ``mosquitto_passwd`` is not needed. Missing passwords are generated and
written to ``DIR/passwords/NAME`` (mode 0600) for handing to the host's ``auth.password_file``.

A stock mosquitto starts as root and drops to user ``mosquitto`` before it reads the
password and ACL files, so those are ``root:mosquitto 0640``. Client ids are bound to user
names (``use_username_as_clientid``), so one host's credentials cannot take over (or kick
off) another host's session; the ACL grants per ``user``, never by client id.

Inventory (YAML or JSON)::

    prefix: cloudstack/bootstrap/v1          # optional
    hosts:
      kvm1.lab.example.org: {roles: [kvm], password: "..."}   # password optional
      kvm2.lab.example.org: {roles: [kvm]}
    operators:
      ops: {password: "..."}                 # or a list of names
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bootstrap.agent.topics import DEFAULT_PREFIX, check_host, check_prefix, check_role
from bootstrap.errors import ConfigError
from bootstrap.files import atomic_write

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd uses for $7$
BROKER_GROUP = "mosquitto"  # Debian's mosquitto package creates this user and group


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    roles: tuple[str, ...]
    password: str | None
    operator: bool = False


@dataclass(frozen=True, slots=True)
class Inventory:
    prefix: str
    hosts: tuple[Account, ...]
    operators: tuple[Account, ...]

    def role_hosts(self, role: str) -> list[str]:
        return [h.name for h in self.hosts if role in h.roles]


def _accounts(raw: object, *, operator: bool) -> list[Account]:
    what = "operators" if operator else "hosts"
    if raw is None:
        return []
    if isinstance(raw, list):
        raw = {str(name): {} for name in raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{what}: a mapping of name -> settings")
    out = []
    for name, given in raw.items():
        settings = given or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{what}.{name}: a mapping (roles, password)")
        unknown = set(settings) - {"roles", "password"}
        if unknown:
            raise ConfigError(f"{what}.{name}: unknown keys {sorted(unknown)}")
        roles = tuple(str(r) for r in settings.get("roles") or ())
        try:
            if not operator:
                check_host(str(name))
            elif not name or any(c in str(name) for c in ":#+/ \n"):
                raise ValueError(f"{name!r} is not a usable user name")
            for role in roles:
                check_role(role)
        except ValueError as exc:
            raise ConfigError(f"{what}.{name}: {exc}") from exc
        password = settings.get("password")
        out.append(Account(str(name), roles, str(password) if password else None, operator))
    return out


def parse_inventory(data: Mapping[str, Any]) -> Inventory:
    unknown = set(data) - {"prefix", "hosts", "operators"}
    if unknown:
        raise ConfigError(f"inventory: unknown keys {sorted(unknown)}")
    try:
        prefix = check_prefix(str(data.get("prefix") or DEFAULT_PREFIX))
    except ValueError as exc:
        raise ConfigError(f"prefix: {exc}") from exc
    hosts = _accounts(data.get("hosts"), operator=False)
    operators = _accounts(data.get("operators"), operator=True)
    names = [a.name for a in hosts + operators]
    if len(set(names)) != len(names):
        raise ConfigError("inventory: a name is both a host and an operator, or listed twice")
    return Inventory(prefix, tuple(hosts), tuple(operators))


def load_inventory(path: Path) -> Inventory:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: an inventory is a mapping (hosts, operators)")
    return parse_inventory(data)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """mosquitto 2's ``$7$`` hash (PBKDF2-SHA512)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def acl_text(inv: Inventory) -> str:
    """The acl_file: one ``user`` block per account, explicit topics, no patterns."""
    p = inv.prefix
    lines = ["# written by csboot broker-acl: what is not granted here is denied", ""]
    for op in inv.operators:
        lines += [f"# operator {op.name}", f"user {op.name}", f"topic readwrite {p}/#", ""]
    for host in inv.hosts:
        lines += [f"# host {host.name}: roles {', '.join(host.roles) or '-'}", f"user {host.name}"]
        lines += [f"topic read {p}/roles/{role}/desired" for role in host.roles]
        lines += [
            f"topic read {p}/hosts/{host.name}/desired",
            f"topic readwrite {p}/hosts/{host.name}/status",
            f"topic write {p}/hosts/{host.name}/events",
            "",
        ]
    return "\n".join(lines)


def group_id(group: str | None) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"group {group!r} does not exist: install mosquitto first (it creates the "
            "mosquitto user and group), or pass --group"
        ) from None


def unreachable(path: Path, gid: int | None) -> Path | None:
    """The first directory on the way to ``path`` the broker's group cannot enter."""
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        st = directory.stat()
        if st.st_mode & 0o001 or (gid is not None and st.st_gid == gid and st.st_mode & 0o010):
            continue
        if gid is None and st.st_uid == os.geteuid():
            continue
        return directory
    return None


@dataclass(frozen=True, slots=True)
class Listener:
    """A listener the snippet defines: ``[ADDR:]PORT``, TLS when the three files are set."""

    port: int
    address: str | None = None
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    @classmethod
    def parse(cls, text: str, **tls: Path | None) -> Listener:
        address, _, port = text.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--listener {text!r}: [ADDR:]PORT with a port in 1..65535")
        return cls(int(port), address.strip("[]") or None, **tls)

    def lines(self) -> list[str]:
        out = [f"listener {self.port}" + (f" {self.address}" if self.address else "")]
        if self.cafile and self.certfile and self.keyfile:
            out += [
                f"cafile {self.cafile.resolve()}",
                f"certfile {self.certfile.resolve()}",
                f"keyfile {self.keyfile.resolve()}",
            ]
        return [*out, "use_username_as_clientid true"]


def auth_conf(out: Path, listeners: Sequence[Listener]) -> str:
    """The mosquitto.conf snippet (``include_dir DIR``): authentication, the ACL, and the
    listeners the hosts use, each binding client ids to user names."""
    lines = [
        "# written by csboot broker-acl; load it with:  include_dir " + str(out.resolve()),
        "# (with per_listener_settings false, the default).",
        "# use_username_as_clientid is a per-listener setting (set before any listener,",
        "# mosquitto would open a default listener on port 1883), so this file defines the",
        "# listeners itself: there, the client id is the user name, and one host's",
        "# credentials can never take over, or kick off, another host's session.",
        "allow_anonymous false",
        f"password_file {(out / 'passwd').resolve()}",
        f"acl_file {(out / 'acl').resolve()}",
    ]
    for listener in listeners:
        lines += ["", *listener.lines()]
    return "\n".join(lines) + "\n"


def write_broker_files(
    inv: Inventory,
    out: Path,
    *,
    group: str | None = BROKER_GROUP,
    listeners: Sequence[Listener] = (Listener(1883),),
) -> dict[str, str]:
    """Write acl, passwd, mosquitto.conf snippet and generated passwords; name -> password.

    ``passwd`` and ``acl`` are ``root:GROUP 0640``, so a stock mosquitto reads them after it
    dropped privileges to its own user; a directory we create is ``0750 root:GROUP``.
    With ``group`` None they are ``0600``, for a broker running as the caller's own user.
    """
    gid = group_id(group)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if created and gid is not None:
        os.chown(out, -1, gid)
        out.chmod(0o750)
    passwords: dict[str, str] = {}
    hashed = []
    for account in inv.operators + inv.hosts:
        password = account.password
        if password is None:
            password = secrets.token_urlsafe(24)
            (out / "passwords").mkdir(mode=0o700, exist_ok=True)
            atomic_write(out / "passwords" / account.name, password.encode() + b"\n", mode=0o600)
        passwords[account.name] = password
        hashed.append(f"{account.name}:{hash_password(password)}")
    secret_mode = 0o600 if gid is None else 0o640
    for name, text in (("passwd", "\n".join(hashed) + "\n"), ("acl", acl_text(inv))):
        atomic_write(out / name, text.encode(), mode=secret_mode)
        if gid is not None:
            os.chown(out / name, -1, gid)
    atomic_write(out / "mosquitto-auth.conf", auth_conf(out, listeners).encode(), mode=0o644)
    return passwords
