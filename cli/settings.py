"""`rag settings`: every setting with its value, and the README table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rag.settings import Settings

from .app import fail


def show_settings(
    readme: Annotated[
        Optional[Path], typer.Option(help="Rewrite the table between the settings markers of this file.")
    ] = None,
) -> None:
    """List every setting with its environment variable, default and meaning (Markdown)."""
    if readme is None:
        typer.echo(settings_table())
        return
    text = readme.read_text()
    start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
    if start not in text or end not in text:
        fail(f"{readme} has no {start.strip()} ... {end} markers")
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{start}{settings_table()}\n{end}{tail}")


def settings_table() -> str:
    rows = ["| env | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path):  # the home folder as ~, the same on every machine
            home = Path.home()
            default = ("~" / default.relative_to(home) if default.is_relative_to(home) else default).as_posix()
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `RAG_{name.upper()}` | {shown} | {' '.join((field.description or '').split())} |")
    return "\n".join(rows)
