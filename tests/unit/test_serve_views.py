"""What the HTTP API shows of an episode: links, never server paths or provider URLs."""

from __future__ import annotations

import json

from serve_app import is_number, parse_submission, public, scrub


def test_errors_lose_provider_urls_and_server_paths() -> None:
    raw = ("ffmpeg failed: /srv/out/ep1/.compose-x/scene.mp4: No such file; "
           "video provider at http://10.0.0.5:8000/v1: 503")
    assert scrub(raw) == ("ffmpeg failed: scene.mp4: No such file; video provider at "
                          "<provider>: 503")
    assert scrub(None) is None and scrub("plain words") == "plain words"


def test_public_view_has_links_not_paths() -> None:
    summary = {"id": "e1", "status": "completed", "owner": "t_x", "output_dir": "/srv/out/e1",
               "files": {"video": "/srv/out/e1/episode.mp4"},
               "error": "at https://api.example.com/v1 timed out",
               "report": {"output_dir": "/srv/out/e1", "files": {}, "error": "/srv/out/e1/x"}}
    shown = json.dumps(public(summary))
    assert "/srv/" not in shown and "api.example.com" not in shown and "t_x" not in shown
    view = public(summary)
    assert view["artifacts"]["episode.mp4"] == "/v1/episodes/e1/artifacts/episode.mp4"
    assert set(view["artifacts"]) == {"script.json", "script.md", "episode.mp4"}


def test_numbers_are_ascii_digits_only() -> None:
    assert is_number("42") and not is_number("\u00b2") and not is_number("-1")


def test_a_batch_of_one_is_still_a_batch() -> None:
    requests, batch = parse_submission(b'{"episodes": [{"premise": "p"}]}', max_batch=5)
    assert batch and len(requests) == 1
    requests, batch = parse_submission(b'{"premise": "p"}', max_batch=5)
    assert not batch and requests[0].premise == "p"
