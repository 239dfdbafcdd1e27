"""`/widget.js`: the chat widget, one <script> tag on any help-centre page (README)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

WIDGET = Path(__file__).resolve().parent / "static" / "widget.js"

router = APIRouter()


@router.get("/widget.js", include_in_schema=False)
@router.head("/widget.js", include_in_schema=False)  # CDNs and uptime checks ask HEAD first
async def widget() -> FileResponse:
    """The chat widget: one <script> tag on any page (see the README)."""
    return FileResponse(WIDGET, media_type="text/javascript", headers={"Cache-Control": "public, max-age=300"})
