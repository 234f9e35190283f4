"""A PGlite (WASM PostgreSQL 17) + TimescaleDB server over the Postgres wire protocol, for tests of
the TimescaleDB storage path. Runs `scripts/pglite-server.mjs` (npm packages pinned in package.json).

Limits of the server: ONE connection at a time (close yours before opening another; a second one
waits), and no `COPY ... FROM STDIN`. Use it for DDL, policies, continuous aggregates, INSERTs, queries.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.services import ROOT, free_port

SERVER = ROOT / "scripts" / "pglite-server.mjs"
START_TIMEOUT_S = 60.0


class PgliteUnavailable(RuntimeError):
    """The server cannot run here (no node); tests should skip with this message."""


def _installed(root: Path) -> bool:
    """node_modules holds exactly the versions package.json pins."""
    wanted = json.loads((root / "package.json").read_text())["dependencies"]
    for name, version in wanted.items():
        meta = root / "node_modules" / name / "package.json"
        if not meta.exists() or json.loads(meta.read_text()).get("version") != version:
            return False
    return True


def ensure_node_modules(root: Path = ROOT) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PgliteUnavailable(
            "node and npm are needed for the TimescaleDB (PGlite) tests: install Node.js >= 18"
        )
    if _installed(root):
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=root, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0 or not _installed(root):
        raise RuntimeError(f"`npm ci` failed in {root}:\n{done.stdout}\n{done.stderr}")


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Forward the server's output lines (it logs little after start); None once it closes."""
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def pglite_server(root: Path = ROOT) -> Iterator[str]:
    """Start a fresh in-memory PGlite + TimescaleDB server on a free port; yields its DSN; stops it."""
    ensure_node_modules(root)
    port = free_port()
    # stdin stays open as a lifeline: the server exits when it closes, even if we die without cleanup
    proc = subprocess.Popen(
        ["node", str(SERVER), "--port", str(port)],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc, lines), name="pglite-output", daemon=True)
    reader.start()
    try:
        output: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (output and output[-1].startswith("listening ")):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"pglite server not ready after {START_TIMEOUT_S}s: {''.join(output)}"
                ) from None
            if line is None:
                raise RuntimeError(f"pglite server exited ({proc.wait()}):\n{''.join(output)}")
            output.append(line)
        # one backend serves every client in turn; scripts/pglite-server.mjs resets its session state
        # (prepared statements) between clients, as a pooler does
        yield f"postgresql://postgres:postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
