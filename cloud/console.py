"""How the ops CLI prints tables of stored data.

What a table shows comes from devices (model, firmware version, a quarantined payload's detail) and from
people (reasons, tags, release versions): text to show as written. rich reads `[...]` in a string as
markup, so a device reporting firmware "[/x]" made `devices list` crash with a MarkupError. Every table
of stored rows is printed with markup off, here.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

__all__ = ["print_table"]


def print_table(table: Table) -> None:
    """Print `table` on stdout, every cell and the title as plain text (never rich markup)."""
    Console(markup=False).print(table)
