"""The docs match the code (issue 14): every `microfleet` command is in the README's CLI table, every HTTP
route in cloud/api/README.md, and every MICROFLEET_* setting the code reads in a README. A new command,
route or setting without its line fails here, with the line to write."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main

from cli.main import app
from tests.support.services import ROOT

README = (ROOT / "README.md").read_text()
API_README = (ROOT / "cloud" / "api" / "README.md").read_text()
SOURCES = ("contract", "edge", "cloud", "simulators", "cli")


def leaf_commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if hasattr(command, "commands"):  # a group (typer's own click or the click package)
            out += leaf_commands(command, (*path, name))
        else:
            out.append((*path, name))
    return out


def cli_rows() -> list[str]:
    """The first cell of every row of the README's CLI table."""
    table = README.split("## The CLI", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in table.splitlines() if line.startswith("| `microfleet")]


def test_every_command_is_in_the_readme_cli_table() -> None:
    root: Any = typer.main.get_command(app)
    rows = cli_rows()
    missing = []
    for path in leaf_commands(root):
        top, rest = path[0], path[1:]
        mine = [r for r in rows if re.search(rf"`microfleet {re.escape(top)}\b|`{re.escape(top)}\b", r)]
        # `microfleet ota release add` / `release list` / `pause`: the leaf, or its last two words
        words = " ".join(rest[-2:]) if len(rest) > 1 else (rest[0] if rest else top)
        if not any(words in r or (rest and f"`{rest[-1]}`" in r) or not rest for r in mine):
            missing.append(" ".join(path))
    assert missing == [], f"add these to README.md's CLI table: {missing}"


def test_every_http_route_is_in_the_api_readme() -> None:
    from cloud.api.app import create_app
    from cloud.config import CloudConfig

    api = create_app(CloudConfig())
    documented = set(re.findall(r"^\| `(GET|POST|PUT|PATCH|DELETE) ([^`?\s]+)", API_README, re.MULTILINE))
    missing = []
    for route in api.routes:
        methods = getattr(route, "methods", None) or set()
        path = getattr(route, "path", "")
        if not getattr(route, "include_in_schema", False) and path not in ("/healthz", "/readyz", "/metrics"):
            continue
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            if (method, path) not in documented:
                missing.append(f"{method} {path}")
    assert missing == [], f"add these routes to cloud/api/README.md: {missing}"


def documented_settings() -> set[str]:
    """MICROFLEET_* names in every README, with `MICROFLEET_A_B`, `_C` rows expanded (MICROFLEET_A_C,
    MICROFLEET_A_B_C ...) and `MICROFLEET_X_*` standing for every MICROFLEET_X_ name."""
    names: set[str] = set()
    for readme in ROOT.glob("**/README.md"):
        if any(part in {"node_modules", ".venv", ".git"} for part in readme.parts):
            continue
        for line in readme.read_text().splitlines():
            full = re.findall(r"MICROFLEET_[A-Z0-9_]*[A-Z0-9*]", line)
            names.update(full)
            for suffix in re.findall(r"`(_[A-Z0-9_]+)`", line):
                for name in full:
                    parts = name.split("_")
                    names.update("_".join(parts[:i]) + suffix for i in range(2, len(parts)))
    return names


def test_every_setting_the_code_reads_is_documented() -> None:
    read = {
        name
        for package in SOURCES
        for source in (ROOT / package).rglob("*.py")
        for name in re.findall(r"[\"'](MICROFLEET_[A-Z0-9_]+)[\"']", source.read_text())
    }
    docs = documented_settings()
    wildcards = [w[:-1] for w in docs if w.endswith("*")]
    missing = sorted(n for n in read if n not in docs and not any(n.startswith(w) for w in wildcards))
    assert missing == [], f"document these settings (README.md configuration table): {missing}"


def test_the_tables_name_nothing_that_does_not_exist() -> None:
    """The reverse direction for the CLI: every `microfleet X` a table row names is a command."""
    root: Any = typer.main.get_command(app)
    tops = set(root.commands)
    named = {re.match(r" `microfleet ([a-z-]+)", r).group(1) for r in cli_rows()}  # type: ignore[union-attr]
    assert named <= tops, f"README names commands that do not exist: {sorted(named - tops)}"


def test_this_file_reads_real_tables() -> None:
    assert len(cli_rows()) >= 10 and len(documented_settings()) >= 20
    assert Path(__file__).name.startswith("test_")
