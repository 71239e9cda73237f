"""Our nftables table's boot file and unit (``fwboot``): pure rendering, ownership, rollback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from bootstrap.engine.plan import make_plan
from bootstrap.engine.resource import Change, Resource
from bootstrap.engine.services import NoServices
from bootstrap.engine.transaction import apply_plan
from bootstrap.host.root import HostRoot
from bootstrap.model import validate_spec
from bootstrap.model.spec import Firewall
from bootstrap.resources import resources_for
from bootstrap.resources.fwboot import (
    RULES_FILE,
    UNIT,
    UNIT_FILE,
    boot_resources,
    render_rules,
    render_unit,
)
from bootstrap.resources.fwmanager import manager_resources
from bootstrap.resources.nft_rules import TABLE_REF, desired_state, replace_batch
from simulator.reboot import exec_start, our_units

LINK = f"etc/systemd/system/sysinit.target.wants/{UNIT}"
FW = Firewall.model_validate({"policy": "drop", "allow_tcp": [22, "5900-6100"]})


def _files(root: Path) -> dict[str, bytes | str | None]:
    """What is at our three paths: bytes, a link's target, or None."""
    out: dict[str, bytes | str | None] = {}
    for rel in (RULES_FILE.lstrip("/"), UNIT_FILE.lstrip("/"), LINK):
        path = root / rel
        if path.is_symlink():
            out[rel] = str(path.readlink())
        else:
            out[rel] = path.read_bytes() if path.exists() else None
    return out


def test_rules_file_is_the_batch_the_agent_applies() -> None:
    data = render_rules(FW)
    assert data == render_rules(FW)  # pure: same input, same bytes
    batch = json.loads(data)
    assert batch == replace_batch(desired_state(FW))
    cmds = batch["nftables"]
    # idempotent and ours only: add + delete of our table first, then only our table
    assert cmds[:2] == [{"add": {"table": TABLE_REF}}, {"delete": {"table": TABLE_REF}}]
    for cmd in cmds:
        ((_, objs),) = cmd.items()
        ((_kind, body),) = objs.items()
        assert body.get("table", body.get("name")) == TABLE_REF["name"], cmd
        assert body["family"] == TABLE_REF["family"]
    assert "flush" not in data.decode() and "ruleset" not in data.decode()
    other = Firewall.model_validate({"policy": "accept", "allow_tcp": [22]})
    assert render_rules(other) != data


def test_unit_loads_our_file_early_and_after_nftables_service() -> None:
    text = render_unit().decode()
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            keys.setdefault(key, []).append(value)
    assert keys["Type"] == ["oneshot"]
    assert keys["DefaultDependencies"] == ["no"]
    assert "nftables.service" in keys["After"][0].split()
    assert "network-pre.target" in keys["Before"][0].split()
    assert keys["Wants"] == ["network-pre.target"]
    assert keys["WantedBy"] == ["sysinit.target"]
    assert exec_start(text) == [["/usr/sbin/nft", "-j", "-f", RULES_FILE]]


async def test_written_in_one_transaction_and_idempotent(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    plan = await make_plan(boot_resources(FW, host))
    assert [c.action for c in plan.changes] == ["create", "create", "create"]
    outcome = await apply_plan(plan, services=NoServices())
    assert outcome.state == "converged", outcome.error
    files = _files(tmp_path)
    assert files[RULES_FILE.lstrip("/")] == render_rules(FW)
    assert files[UNIT_FILE.lstrip("/")] == render_unit()
    assert files[LINK] == UNIT_FILE
    assert our_units(tmp_path) == [(UNIT, tmp_path / UNIT_FILE.lstrip("/"))]
    assert (await make_plan(boot_resources(FW, host))).changes == []


class _Fails(Resource[int]):
    state_type: ClassVar[Any] = int

    @property
    def name(self) -> str:
        return "test/fails"

    async def observe(self) -> int:
        return 0

    def target(self, current: int) -> int:
        return 1

    def diff(self, current: int, target: int) -> list[Change]:
        return [] if current == target else [Change(self.name, "modify", "fails")]

    async def apply(self, current: int, target: int) -> None:
        raise RuntimeError("boom")


async def test_rollback_gives_back_every_byte_and_absence(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    # an earlier apply's (older) file and unit, and no link: absence must come back too
    (tmp_path / "etc/cloudstack-bootstrap").mkdir(parents=True)
    old_rules, old_unit = b'{"nftables": []}\n', b"[Unit]\n# an older unit\n"
    (tmp_path / RULES_FILE.lstrip("/")).write_bytes(old_rules)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / UNIT_FILE.lstrip("/")).write_bytes(old_unit)
    before = _files(tmp_path)
    plan = await make_plan([*boot_resources(FW, host), _Fails()])
    outcome = await apply_plan(plan, services=NoServices())
    assert outcome.state != "converged"
    assert _files(tmp_path) == before
    assert before[LINK] is None


async def test_a_manager_or_no_firewall_section_removes_ours(tmp_path: Path) -> None:
    host = HostRoot(tmp_path)
    assert (await apply_plan(await make_plan(boot_resources(FW, host)), services=NoServices())).ok
    assert all(v is not None for v in _files(tmp_path).values())
    # no firewall section: the whole spec's resources remove our three, nothing else
    spec = validate_spec({})
    plan = await make_plan(resources_for(spec, host, installs=False))
    ours = {c.resource for c in plan.changes if c.action == "delete"}
    assert ours == {
        f"file{RULES_FILE}",
        f"file{UNIT_FILE}",
        f"link/{LINK}",
    }
    assert (await apply_plan(plan, services=NoServices())).ok
    assert set(_files(tmp_path).values()) == {None}
    # and with nothing of ours there, nothing to do
    assert (await make_plan(boot_resources(None, host))).changes == []


def test_manager_backends_plan_removal_nftables_plans_the_files(tmp_path: Path) -> None:
    spec = validate_spec({"firewall": {"backend": "nftables"}})
    names = [r.name for r in manager_resources(spec, HostRoot(tmp_path))]
    assert names[0] == "nft/inet cloudstack_bootstrap"
    assert f"file{RULES_FILE}" in names and f"file{UNIT_FILE}" in names
    targets = [getattr(r, "content", "link") for r in boot_resources(None, HostRoot(tmp_path))]
    assert targets == ["link", None, None]
