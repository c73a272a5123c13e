"""The studio: one page (HTML, a few small ES modules, a style sheet; no build step, nothing
fetched from elsewhere) that signs in, submits premises, follows episodes live and plays what
they made.

Served by the Serve app and by ``showrunner open`` alike: ``/`` is the page, ``/studio/<name>``
its files. A name from a request is looked up in ``ASSETS``, never joined to a path, so nothing
outside ``static/`` can be asked for.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pipelines.models import MAX_SCENES, EpisodeRequest

STATIC = Path(__file__).with_name("static")

# Every file the page may fetch, by the name it is served under, with its media type.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "studio.css": "text/css; charset=utf-8",
    # The entry module, and those it imports.
    "studio.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "signin.js": "text/javascript; charset=utf-8",
    "submit.js": "text/javascript; charset=utf-8",
    "episodes.js": "text/javascript; charset=utf-8",
    "episode.js": "text/javascript; charset=utf-8",
    "stages.js": "text/javascript; charset=utf-8",
    "files.js": "text/javascript; charset=utf-8",
    "screenplay.js": "text/javascript; charset=utf-8",
    "timeline.js": "text/javascript; charset=utf-8",
}

# Headers for the page and its files: its own scripts only, no inline script (the page renders
# data with DOM nodes, never as HTML); no Referer, since its URLs may carry episode tokens.
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def asset(name: str) -> tuple[Path, str] | None:
    """The file served as ``/studio/<name>`` and its media type; None for any other name, and
    for a listed file not there (``timeline.js`` before it is written)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return None
    path = STATIC / name
    return (path, media_type) if path.is_file() else None


# Where the page holds EpisodeRequest's defaults and limits: its form takes them from the model
# itself, so they cannot drift apart.
FIELDS_BLOCK = '<script type="application/json" id="request-fields">{}</script>'
# What a field's schema says that a form control can use.
CONSTRAINTS = ("type", "default", "minimum", "maximum", "exclusiveMinimum", "minLength",
               "maxLength", "enum", "description")


def request_fields() -> dict[str, dict[str, Any]]:
    """Each ``EpisodeRequest`` field's default and limits, from its JSON schema (an optional
    field's limits are those of its non-null branch), and K of ``window:K``/``batch:K``."""
    fields: dict[str, dict[str, Any]] = {}
    for name, schema in EpisodeRequest.model_json_schema()["properties"].items():
        merged = dict(schema)
        for branch in schema.get("anyOf", []):
            if branch.get("type") != "null":
                merged = {**branch, **{k: v for k, v in schema.items() if k != "anyOf"}}
        fields[name] = {k: merged[k] for k in CONSTRAINTS if k in merged}
    fields["continuity_k"] = {"type": "integer", "default": 2, "minimum": 1,
                              "maximum": MAX_SCENES}
    return fields


@functools.cache
def page_html() -> str:
    """The page, with the request's fields in it (made once: neither changes while a server
    runs). The JSON cannot end its block early: every ``<`` in it is escaped."""
    data = json.dumps(request_fields(), ensure_ascii=False).replace("<", "\\u003c")
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    return page.replace(FIELDS_BLOCK, FIELDS_BLOCK.replace("{}", data), 1)
