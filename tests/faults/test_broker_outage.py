"""The broker down for 30 s in the middle of a 20-host rollout (issue 10): every host
converges after, and no status is lost. The fleet and ``csboot rollout`` are the ones of
``tests/mqtt/test_rollout.py``; the broker is stopped when the rollout's retained state
says the second wave was admitted, and started again 30 s later (same port, same
persistence)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.conftest import until
from tests.mqtt.conftest import PREFIX, role_doc
from tests.mqtt.test_rollout import HOSTS, LIBVIRTD, Fleet, port_of, spec, start_fleet

pytestmark = pytest.mark.mqtt

OUTAGE = 30.0  # the fault itself, not a synchronisation


def rollout_state(fleet: Fleet) -> dict[str, object] | None:
    return fleet.client.retained(f"{PREFIX}/rollouts/kvm")


def test_broker_down_30s_mid_rollout_every_host_converges_and_no_status_is_lost(
    tmp_path: Path,
) -> None:
    with start_fleet(tmp_path, HOSTS, 16509, ready=90) as fleet:  # 20 starts on a busy box
        version = fleet.version() + 1
        proc = fleet.rollout(role_doc(1, **spec(16900)), "--waves", "1,25%,100%")
        try:
            until(
                lambda: (
                    (s := rollout_state(fleet)) is not None
                    and s["version"] == version
                    and int(str(s["wave"])) >= 1
                ),
                40,
                "the second wave",
            )
            fleet.broker.stop()
            down = time.monotonic()
            first, _ = proc.communicate(timeout=OUTAGE)  # the controller loses the broker
            assert proc.returncode == 2, first
            assert "run the same command to resume" in first
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
            fleet.broker.start()
            back = time.monotonic()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        again = fleet.rollout(role_doc(1, **spec(16900)), "--waves", "1,25%,100%")
        out, _ = again.communicate(timeout=120)
        assert again.returncode == 0, out
        assert "resuming rollout" in out
        final = fleet.wait_all(version, timeout=30)
        converged_after = time.monotonic() - back
        assert all(agent.proc.poll() is None for agent in fleet.agents)
        for host in HOSTS:
            status = final[host]
            # no status lost: the retained status is each host's last word, and it says what
            # its files say (an apply finished while the broker was away is reported after)
            assert status["state"] == "converged" and status["error"] is None, status
            assert port_of(fleet.roots[host]) == 'tcp_port = "16900"', host
            assert (fleet.roots[host] / LIBVIRTD).exists()
        state = rollout_state(fleet)
        assert state is not None and state["phase"] == "completed" and not state["failed"]
        print(
            f"\nbroker down {OUTAGE:g}s mid-rollout: 20/20 converged at v{version} "
            f"{converged_after:.1f}s after it came back"
        )
