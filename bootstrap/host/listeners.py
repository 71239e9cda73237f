"""Is a daemon doing its job? A TLS listener's handshake, chrony's synchronisation.

Used by the agent's post-apply checks: they report, they never roll back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from bootstrap.engine.check import Check


async def tls_answers(host: str, port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """A TLS server answers on ``host:port``: the handshake completes, or the server ends it
    with a TLS alert (libvirtd asks for a client certificate we do not send). A plain TCP
    server, or nothing at all, is not one."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout
        )
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "ALERT" in reason.upper():
            return True, f"TLS alert {reason}"
        return False, f"not TLS ({reason})"
    except ConnectionRefusedError:
        return False, "nothing listens"
    except TimeoutError:
        return False, "no TLS handshake (timed out)"
    except OSError as exc:  # something listens, and hangs up on a TLS hello
        return False, f"not TLS ({type(exc).__name__})"
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True, "TLS handshake"


async def wait_for_tls(host: str, port: int, window: float) -> tuple[bool, str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    delay = 0.05
    while True:
        ok, why = await tls_answers(host, port)
        if ok or loop.time() >= deadline:
            return ok, why
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def parse_tracking(text: str) -> tuple[bool, str]:
    """``chronyc -n tracking``: synchronised when the leap status is Normal."""
    fields = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())
    }
    leap = fields.get("Leap status", "unknown")
    ref = fields.get("Reference ID", "none")
    return leap == "Normal", f"leap status {leap}, reference {ref}"


async def time_synchronised() -> Check:
    try:
        proc = await asyncio.create_subprocess_exec(
            "chronyc",
            "-n",
            "tracking",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        return Check("time-synchronised", False, "chronyc not found: chrony is not installed")
    out, err = await proc.communicate()
    if proc.returncode != 0:
        return Check("time-synchronised", False, f"chronyc: {err.decode().strip()}")
    ok, detail = parse_tracking(out.decode(errors="replace"))
    return Check("time-synchronised", ok, detail)
