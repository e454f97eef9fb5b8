"""Container HEALTHCHECK probe: exit 0 iff ``GET /readyz`` on this container's service answers 200.

Used in exec form (no shell, no curl in the image): ``python3 -m deploy.healthcheck``. The port is
``$DGAE_PORT`` (the service's own setting), the host the loopback address.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8000  # service.core.settings.ServiceSettings.port default
TIMEOUT_S = 5.0
HTTP_OK = 200
EXIT_HEALTHY, EXIT_UNHEALTHY = 0, 1
PATH = "/readyz"


def check(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    url = f"http://{host}:{port}{PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed http URL
            return resp.status == HTTP_OK, f"{url}: {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def main() -> int:
    raw = os.environ.get("DGAE_PORT") or str(DEFAULT_PORT)
    if not raw.isdigit():
        print(f"unhealthy: DGAE_PORT={raw!r} is not a port number", file=sys.stderr)
        return EXIT_UNHEALTHY
    healthy, detail = check(int(raw))
    print(("healthy: " if healthy else "unhealthy: ") + detail, file=sys.stderr)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
