"""What the HTTP API shows of an episode: links, never server paths or provider URLs."""

from __future__ import annotations

import json

from pipelines.episode_folder import Artifact
from pipelines.episode_view import EpisodeFigures, EpisodeView, Missing
from pipelines.models import EpisodeStatus, SceneState
from serve_app import is_number, parse_submission, public, scrub


def test_errors_lose_provider_urls_and_server_paths() -> None:
    raw = ("ffmpeg failed: /srv/out/ep1/.compose-x/scene.mp4: No such file; "
           "video provider at http://10.0.0.5:8000/v1: 503")
    assert scrub(raw) == ("ffmpeg failed: scene.mp4: No such file; video provider at "
                          "<provider>: 503")
    assert scrub(None) is None and scrub("plain words") == "plain words"


def test_public_view_has_links_not_paths() -> None:
    figures = EpisodeFigures(scenes=2, scenes_completed=2, wall_s=3.0, sequential_s=9.0,
                             critical_path_s=2.5, cost_usd=0.01, cpu_s=1.5)
    view = EpisodeView(id="e1", owner="t_x", status=EpisodeStatus.COMPLETED, title="T",
                       percent=100.0, scenes=[SceneState.DONE] * 2, cost_usd=0.01,
                       error="at https://api.example.com/v1 timed out: /srv/out/e1/x",
                       last_event_id=9, figures=figures,
                       artifacts=[Artifact.SCRIPT_JSON, Artifact.SCRIPT_MD, Artifact.VIDEO],
                       missing=[Missing(what="scene 2", why="ffmpeg failed: /srv/out/e1/a.wav")])
    shown = public(view)
    text = json.dumps(shown)
    assert "/srv/" not in text and "api.example.com" not in text and "t_x" not in text
    assert shown["missing"] == [{"what": "scene 2", "why": "ffmpeg failed: a.wav"}]
    assert shown["artifacts"]["episode.mp4"] == "/v1/episodes/e1/artifacts/episode.mp4"
    assert set(shown["artifacts"]) == {"script.json", "script.md", "episode.mp4"}
    assert shown["report"]["critical_path_s"] == 2.5 and shown["report"]["error"] == shown["error"]
    assert shown["links"]["events"] == "/v1/episodes/e1/events" and shown["scenes"] == ["done"] * 2


def test_numbers_are_ascii_digits_only() -> None:
    assert is_number("42") and not is_number("\u00b2") and not is_number("-1")


def test_a_batch_of_one_is_still_a_batch() -> None:
    requests, batch = parse_submission(b'{"episodes": [{"premise": "p"}]}', max_batch=5)
    assert batch and len(requests) == 1
    requests, batch = parse_submission(b'{"premise": "p"}', max_batch=5)
    assert not batch and requests[0].premise == "p"
