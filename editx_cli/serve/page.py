"""The web page, with what the engine can do written in, and its Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from editx_cli.engine import Engine


def ui_page(engine_cls: type[Engine]) -> tuple[str, str]:
    """ui.html with what this engine can do written in, so the page needs no extra request, and
    its Content-Security-Policy: its own inline script and style (by hash), nothing else inline."""
    from importlib import resources

    from editx_cli.deliver import FORMATS
    from editx_cli.settings import INTENSITY, ITERATIONS
    from editx_cli.tasks import EDIT_INFOS

    options = {"formats": list(FORMATS),
               "edit_types": [t for t in EDIT_INFOS if t in engine_cls.edit_types],
               "edit_infos": {t: list(v) for t, v in EDIT_INFOS.items()}, "clone": "clone" in engine_cls.task_kinds,
               "intensity": [*INTENSITY.range, INTENSITY.default], "iterations": ITERATIONS.default}
    page = resources.files("editx_cli").joinpath("ui.html").read_text(encoding="utf-8")
    page = page.replace("__EDITX_OPTIONS__", json.dumps(options).replace("</", "<\\/"))
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)

    def hashes(blocks: list[str]) -> str:
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes(scripts)}; style-src {hashes(styles)}; img-src 'self' data:; "
              "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
              "frame-ancestors 'none'")
    return page, policy
