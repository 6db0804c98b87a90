"""Container health check: exit 0 when the recloop process in this container answers, 1 otherwise.

``python healthcheck.py worker``: the worker's ``/counts/`` page (port ``RECLOOP_WORKER_WEB_PORT``, default 6066).
``python healthcheck.py serve``: ``/healthz`` (port ``RECLOOP_SERVE_PORT``, default 8000), which answers 200 once a
model version serves and 503 while the worker starts. Standard library only: it runs in the image's Python.
"""

from __future__ import annotations

import os
import sys
import urllib.request

#: target -> (environment variable of the port, its default, path)
TARGETS = {
    "worker": ("RECLOOP_WORKER_WEB_PORT", 6066, "/counts/"),
    "serve": ("RECLOOP_SERVE_PORT", 8000, "/healthz"),
}


def url(target: str) -> str:
    variable, default, path = TARGETS[target]
    return f"http://127.0.0.1:{os.environ.get(variable) or default}{path}"


def healthy(target: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url(target), timeout=timeout_s) as response:
            return response.status == 200
    except OSError as exc:  # refused, timed out, or an HTTP error status (urllib's HTTPError is an OSError)
        print(f"{url(target)}: {exc}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in TARGETS:
        print(f"usage: healthcheck.py {{{','.join(TARGETS)}}}", file=sys.stderr)
        return 2
    return 0 if healthy(argv[1]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
