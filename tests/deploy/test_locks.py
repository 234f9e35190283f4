"""Reproducible installs: the lock files (scripts/lock) pin every package of each role, agree with each
other and with pyproject.toml, and `make venv`, the Dockerfiles and scripts/check-extras install with
them; the dev tools are pinned exactly; the licence text ships."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("dev", "cloud", "edge", "sim")


def pins(role: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "requirements" / f"{role}.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{role}.lock: {line!r} is not name==version"
        out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_role_locks_are_subsets_of_the_dev_lock() -> None:
    dev = pins("dev")
    assert "microfleet" not in dev
    for role in ROLES[1:]:
        locked = pins(role)
        assert locked, role
        assert {n: v for n, v in locked.items() if dev.get(n) != v} == {}, (
            f"{role}.lock disagrees with dev.lock"
        )
    assert "psycopg" not in pins("sim") and "psycopg" not in pins("edge")


def test_dev_tools_are_pinned_exactly_and_locked_at_that_version() -> None:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    locked = pins("dev")
    for tool in ("ruff", "mypy", "import-linter"):
        (req,) = [r for r in dev if re.match(rf"{tool}\b", r)]
        assert re.fullmatch(rf"{tool}==[\w.]+", req), f"pin {tool} exactly: {req}"
        assert locked[tool] == req.split("==")[1]


def test_installs_use_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-c requirements/dev.lock -e '.[dev]'" in makefile
    assert re.search(r"^\$\(STAMP\):.*requirements/dev\.lock", makefile, flags=re.M)
    for name, role in (("Dockerfile.cloud", "cloud"), ("Dockerfile.device", "sim")):
        text = (ROOT / "deploy/docker" / name).read_text()
        assert f"PIP_CONSTRAINT=/src/requirements/{role}.lock" in text, name
        assert "COPY requirements ./requirements" in text, name
        assert f'pip install ".[{role}]"' in text, name
        assert "!requirements/" in (ROOT / "deploy/docker" / f"{name}.dockerignore").read_text()
    assert "requirements/$pip_extra.lock" in (ROOT / "scripts/check-extras").read_text()


def test_the_apache_licence_ships() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
