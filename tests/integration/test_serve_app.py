"""The HTTP API through a real ``serve.run`` on loopback: auth and tenancy, a corpus of bad
requests, submit → events → completed, cancel, artifacts with Range, idempotent submits, quotas;
and the studio page the same app serves, in a real Chromium (one app for both: it takes seconds
to start).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from ray import serve

import serve_app
from pipelines.episode_folder import Artifact
from pipelines.settings import load_settings
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
KEY_C = "key-c-0123456789abcdef"  # only the request-rate test uses it
KEY_D = "key-d-0123456789abcdef"  # only the studio's tests use it: its list is theirs alone
PROVIDER_SECRET = "sk-provider-secret-never-shown"
RPM = 400
PREFIX = "serve-test"
DOCS = Path(__file__).parents[2] / "docs"



@pytest.fixture(scope="module")
def base_url(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    settings = load_settings(
        api_keys=f"{KEY_A},{KEY_B},{KEY_C},{KEY_D}",
        llm={"api_key": PROVIDER_SECRET},
        storage=str(tmp_path_factory.mktemp("served")),
        service={"local_latency_scale": 0.05, "requests_per_minute": RPM,
                 "max_active_episodes": 6, "max_scenes_per_request": 60, "max_batch": 8,
                 "max_body_bytes": 64 * 1024},
        encoding={"width": 320, "height": 180, "fps": 8, "x264_preset": "ultrafast"},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serve_app.build_app(settings, prefix=PREFIX), name=PREFIX, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    serve_app.stop_service(PREFIX)


def client(key: str | None) -> requests.Session:
    session = requests.Session()
    if key is not None:
        session.headers["Authorization"] = f"Bearer {key}"
    return session


def script(premise: str = "A lighthouse keeper adopts a seagull.", **extra: Any) -> dict:
    return {"premise": premise, "scenes": 2, "lines_per_scene": 2, "media": False, **extra}


def events(url: str, key: str, last_event_id: int | None = None) -> list[dict]:
    """Read an episode's event stream to its end; each event's SSE id must match its seq."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    out, current = [], {}
    with client(key).get(url, headers=headers, stream=True, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith(("id:", "event:", "data:")):
                name, _, value = line.partition(":")
                current[name] = value.strip()
            elif line == "" and "data" in current:
                event = json.loads(current["data"])
                assert int(current["id"]) == event["seq"] and current["event"] == event["kind"]
                out.append(event)
                current = {}
    return out


def submit(base_url: str, key: str, body: dict, **headers: str) -> requests.Response:
    return client(key).post(f"{base_url}/v1/episodes", json=body, headers=headers, timeout=30)


# -- the happy paths ----------------------------------------------------------------------------

def test_submit_then_events_until_completed_then_artifacts(base_url: str) -> None:
    response = submit(base_url, KEY_A, script(media=True, lines_per_scene=1))
    assert response.status_code == 202, response.text
    episode = response.json()
    assert response.headers["location"] == episode["links"]["self"]
    stream = events(base_url + episode["links"]["events"], KEY_A)
    kinds = [e["kind"] for e in stream]
    assert kinds[0] == "queued" and kinds[-1] == "completed"
    assert [e["seq"] for e in stream] == list(range(1, len(stream) + 1))

    shown = client(KEY_A).get(base_url + episode["links"]["self"]).json()
    assert shown["status"] == "completed" and shown["percent"] == 100.0
    assert shown["scenes"] == ["done", "done"] and shown["report"]["scenes_completed"] == 2
    assert set(shown["artifacts"]) == {a.value for a in Artifact}
    assert "output_dir" not in json.dumps(shown)  # links, never server paths

    video = base_url + shown["artifacts"]["episode.mp4"]
    whole = client(KEY_A).get(video)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    part = client(KEY_A).get(video, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1099/{len(whole.content)}"
    assert part.content == whole.content[100:1100]
    head = client(KEY_A).head(video)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole.content)
    script_json = client(KEY_A).get(base_url + shown["artifacts"]["script.json"]).json()
    assert len(script_json["scenes"]) == 2


def test_events_resume_after_last_event_id(base_url: str) -> None:
    episode = submit(base_url, KEY_A, script()).json()
    url = base_url + episode["links"]["events"]
    everything = events(url, KEY_A)
    resumed = events(url, KEY_A, last_event_id=3)
    assert resumed == everything[3:]


def test_cancel_is_idempotent_and_stops_the_episode(base_url: str) -> None:
    episode = submit(base_url, KEY_A, script(scenes=40)).json()
    first = client(KEY_A).delete(base_url + episode["links"]["self"])
    again = client(KEY_A).delete(base_url + episode["links"]["self"])
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "cancelled"
    shown = client(KEY_A).get(base_url + episode["links"]["self"]).json()
    assert shown["status"] == "cancelled" and "done" not in shown["scenes"][-5:]
    assert events(base_url + episode["links"]["events"], KEY_A)[-1]["kind"] == "cancelled"


def test_idempotency_key_returns_the_same_episode(base_url: str) -> None:
    first = submit(base_url, KEY_A, script(premise="once"), **{"Idempotency-Key": "order-17"})
    again = submit(base_url, KEY_A, script(premise="once"), **{"Idempotency-Key": "order-17"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other_tenant = submit(base_url, KEY_B, script(premise="once"),
                          **{"Idempotency-Key": "order-17"})
    assert other_tenant.json()["id"] != first.json()["id"]
    changed = submit(base_url, KEY_A, script(premise="twice"), **{"Idempotency-Key": "order-17"})
    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    as_batch = submit(base_url, KEY_A, {"episodes": [script(premise="once")] * 2},
                      **{"Idempotency-Key": "order-17"})
    assert as_batch.status_code == 422  # the same key, other requests: never new episodes
    no_key = [submit(base_url, KEY_A, script(premise="once")).json()["id"] for _ in range(2)]
    assert no_key[0] != no_key[1]


def test_batch_submit_and_paginated_listing(base_url: str) -> None:
    batch = {"episodes": [script(premise=f"batch {i}") for i in range(3)]}
    response = submit(base_url, KEY_B, batch)
    assert response.status_code == 202
    ids = [e["id"] for e in response.json()["episodes"]]
    assert len(set(ids)) == 3
    for i in ids:
        events(f"{base_url}/v1/episodes/{i}/events", KEY_B)

    seen, cursor = [], None
    while True:
        params = {"limit": 2, "status": "completed", **({"cursor": cursor} if cursor else {})}
        page = client(KEY_B).get(f"{base_url}/v1/episodes", params=params).json()
        assert len(page["episodes"]) <= 2
        seen += [e["id"] for e in page["episodes"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    # Newest first, page by page: the batch's last episode first, then back in turn.
    newest, cursor = [], None
    while True:
        params = {"limit": 2, "order": "newest", **({"cursor": cursor} if cursor else {})}
        page = client(KEY_B).get(f"{base_url}/v1/episodes", params=params).json()
        newest += [e["id"] for e in page["episodes"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert newest[:3] == ids[::-1] and sorted(newest) == sorted(set(newest))
    bad = client(KEY_B).get(f"{base_url}/v1/episodes", params={"order": "latest"})
    assert bad.status_code == 422 and "order" in bad.text
    queued = client(KEY_B).get(f"{base_url}/v1/episodes", params={"status": "queued"}).json()
    assert not set(ids) & {e["id"] for e in queued["episodes"]}


# -- tenancy and auth ---------------------------------------------------------------------------

def test_tenants_see_only_their_own_episodes(base_url: str) -> None:
    mine = submit(base_url, KEY_A, script(premise="private")).json()
    for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/events"),
                         ("GET", "/artifacts/script.json")]:
        response = client(KEY_B).request(method, base_url + mine["links"]["self"] + path)
        assert response.status_code == 404, (method, path)
    listed = client(KEY_B).get(f"{base_url}/v1/episodes", params={"limit": 100}).json()
    assert mine["id"] not in {e["id"] for e in listed["episodes"]}
    assert client(KEY_A).get(base_url + mine["links"]["self"]).status_code == 200


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key-0123456789", "Basic " + KEY_A,
                                           f"Bearer {KEY_A}x", "Bearer ", KEY_A])
def test_missing_or_wrong_keys_are_401(base_url: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = requests.get(f"{base_url}/v1/episodes", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["error"]["message"]


def test_health_and_docs_need_no_key(base_url: str) -> None:
    assert requests.get(f"{base_url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{base_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["coordinator"] == "ok"
    schema = requests.get(f"{base_url}/openapi.json", timeout=10).json()
    body = schema["paths"]["/v1/episodes"]["post"]["requestBody"]
    assert "EpisodeRequest" in json.dumps(body) and "EpisodeRequest" in json.dumps(
        schema["components"]["schemas"])
    assert requests.get(f"{base_url}/docs", timeout=10).status_code == 200


# -- quotas -------------------------------------------------------------------------------------

def test_quotas_answer_429_with_retry_after(base_url: str) -> None:
    too_many_scenes = submit(base_url, KEY_B, script(scenes=61))
    assert too_many_scenes.status_code == 429 and "retry-after" in too_many_scenes.headers
    assert "61 scenes" in too_many_scenes.json()["error"]["message"]

    slow = {"episodes": [script(premise=f"long {i}", scenes=10) for i in range(6)]}
    over = submit(base_url, KEY_B, {"episodes": slow["episodes"] + [script()]})
    assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    started = submit(base_url, KEY_B, slow)
    assert started.status_code == 202
    refused = submit(base_url, KEY_B, script())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert submit(base_url, KEY_A, script()).status_code == 202  # other tenants unaffected
    for episode in started.json()["episodes"]:
        client(KEY_B).delete(base_url + episode["links"]["self"])
    assert submit(base_url, KEY_B, script()).status_code == 202


def test_requests_per_minute_per_tenant(base_url: str) -> None:
    session = client(KEY_C)
    allowed = 0
    for _ in range(2 * RPM):  # a minute's quota at once, then 429 (it refills meanwhile)
        response = session.get(f"{base_url}/v1/episodes", params={"limit": 1})
        if response.status_code == 429:
            break
        assert response.status_code == 200
        allowed += 1
    assert RPM <= allowed < 2 * RPM
    assert int(response.headers["retry-after"]) >= 1
    assert "a minute" in response.json()["error"]["message"]
    assert client(KEY_A).get(f"{base_url}/v1/episodes").status_code == 200


# -- a corpus of bad requests: each is a 4xx with a clear message, never a 5xx ------------------

def long_text(n: int) -> str:
    return "x" * n


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    # (case, JSON body or raw bytes, status, a field or a phrase the message must name)
    ("scenes as text", script(scenes="six"), 422, "scenes"),
    ("scenes zero", script(scenes=0), 422, "scenes"),
    ("scenes over 200", script(scenes=201), 422, "scenes"),
    ("lines zero", script(lines_per_scene=0), 422, "lines_per_scene"),
    ("lines over 40", script(lines_per_scene=41), 422, "lines_per_scene"),
    ("priority over 100", script(priority=101), 422, "priority"),
    ("negative budget", script(budget_usd=-1), 422, "budget_usd"),
    ("negative seed", script(seed=-1), 422, "seed"),
    ("seed as float", script(seed=1.5), 422, "seed"),
    ("empty premise", script(premise=""), 422, "premise"),
    ("premise too long", script(premise=long_text(4001)), 422, "premise"),
    ("premise missing", {"scenes": 2}, 422, "premise"),
    ("premise as number", script(premise=42), 422, "premise"),
    ("title too long", script(title=long_text(201)), 422, "title"),
    ("unknown field", script(model="gpt-5"), 422, "model"),
    ("provider url smuggled", script(base_url="http://169.254.169.254/"), 422, "base_url"),
    ("bad continuity", script(continuity="sideways"), 422, "continuity"),
    ("window of zero", script(continuity="window:0"), 422, "continuity"),
    ("bad failure policy", script(on_scene_failure="ignore"), 422, "on_scene_failure"),
    ("media not a bool", script(media="perhaps"), 422, "media"),
    ("characters not a list", script(characters="Ann"), 422, "characters"),
    ("too many characters", script(characters=[{"name": f"c{i}"} for i in range(21)]), 422,
     "characters"),
    ("body is a list", [script()], 422, "JSON object"),
    ("body is a string", "make me a show", 422, "JSON object"),
    ("body is null", b"null", 422, "JSON object"),
    ("empty batch", {"episodes": []}, 422, "episodes"),
    ("batch too big", {"episodes": [script()] * 9}, 422, "episodes"),
    ("batch not a list", {"episodes": script()}, 422, "episodes"),
    ("bad item in batch", {"episodes": [script(), script(scenes=-3)]}, 422, "episodes.1.scenes"),
    ("batch with extra key", {"episodes": [script()], "force": True}, 422, "force"),
    ("bad JSON", b"{premise: 'unquoted'}", 400, "not valid JSON"),
    ("empty body", b"", 400, "empty"),
    ("not UTF-8", b"\xff\xfe{}", 400, "not valid JSON"),
    ("nested too deeply", b"[" * 60_000, 400, "nested too deeply"),
    ("huge body", script(premise=long_text(70 * 1024)), 413, "limit"),
    # Integers past Python's int-string conversion limit (4,300 digits) used to be 500s.
    ("5000-digit scenes", b'{"premise": "p", "scenes": ' + b"7" * 5000 + b"}", 422, "scenes"),
    ("5000-digit seed in a batch", b'{"episodes": [{"premise": "p", "seed": -' + b"7" * 5000
     + b"}]}", 422, "episodes.0.seed"),
    ("5000-digit unknown field", b'{"premise": "p", "n": [1, ' + b"7" * 5000 + b"]}", 422,
     "n.1"),
]


@pytest.mark.parametrize(("case", "body", "status", "named"), BAD_BODIES,
                         ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies(base_url: str, case: str, body: Any, status: int, named: str) -> None:
    session = client(KEY_B)
    if isinstance(body, bytes):
        response = session.post(f"{base_url}/v1/episodes", data=body,
                                headers={"Content-Type": "application/json"})
    else:
        response = session.post(f"{base_url}/v1/episodes", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and named in error["message"], error
    if status == 422 and "fields" in error:
        assert any(named in f["field"] for f in error["fields"]) or named in error["message"]


def test_huge_body_without_length_is_413(base_url: str) -> None:
    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
        yield b'{"premise": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = client(KEY_B).post(f"{base_url}/v1/episodes", data=chunks(),
                                  headers={"Content-Type": "application/json"})
    assert response.status_code == 413


BAD_CALLS: list[tuple[str, str, dict[str, str], int, str]] = [
    # (method, path, headers, status, a phrase the message must hold)
    ("GET", "/v1/episodes/no-such-episode", {}, 404, "no episode"),
    ("DELETE", "/v1/episodes/no-such-episode", {}, 404, "no episode"),
    ("GET", "/v1/episodes/no-such-episode/events", {}, 404, "no episode"),
    ("GET", "/v1/episodes?limit=0", {}, 422, "limit"),
    ("GET", "/v1/episodes?limit=1000", {}, 422, "limit"),
    ("GET", "/v1/episodes?limit=many", {}, 422, "limit"),
    ("GET", "/v1/episodes?status=bogus", {}, 422, "status"),
    ("GET", "/v1/episodes?cursor=abc", {}, 422, "cursor"),
    ("GET", "/v1/episodes?cursor=%C2%B2", {}, 422, "cursor"),
    ("PUT", "/v1/episodes", {}, 405, "Method Not Allowed"),
    ("GET", "/v1/nothing-here", {}, 404, "Not Found"),
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "named"), BAD_CALLS,
                         ids=[f"{c[0]} {c[1]}" for c in BAD_CALLS])
def test_bad_calls(base_url: str, method: str, path: str, headers: dict[str, str],
                   status: int, named: str) -> None:
    response = client(KEY_B).request(method, base_url + path, headers=headers)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]


def test_bad_headers_and_artifact_names(base_url: str) -> None:
    episode = submit(base_url, KEY_B, script(premise="for bad names")).json()
    events(base_url + episode["links"]["events"], KEY_B)
    self_url = base_url + episode["links"]["self"]
    session = client(KEY_B)
    for name in ["..%2F..%2F..%2Fetc%2Fpasswd", "%2E%2E", "report.json", "script.json%00",
                 "episode.mp4.partial"]:
        response = session.get(f"{self_url}/artifacts/{name}")
        assert response.status_code == 404, name
        assert "root:" not in response.text
    assert session.get(f"{self_url}/artifacts/script.json").status_code == 200
    for bad_id in ("x", "\u00b2"):  # "²" passes str.isdigit but not int()
        response = session.get(f"{self_url}/events", headers={"Last-Event-ID": bad_id})
        assert response.status_code == 422, bad_id
    too_long = session.post(f"{base_url}/v1/episodes", json=script(),
                            headers={"Idempotency-Key": "k" * 300})
    assert too_long.status_code == 422 and "Idempotency-Key" in too_long.text


HUGE = "7" * 5001  # past Python's int-string conversion limit (4,300 digits)


def test_too_large_integers_in_headers_and_queries_are_4xx_naming_them(base_url: str) -> None:
    episode = submit(base_url, KEY_B, script(premise="for huge numbers")).json()
    events(base_url + episode["links"]["events"], KEY_B)
    session = client(KEY_B)
    answers = [
        ("Last-Event-ID", session.get(base_url + episode["links"]["events"],
                                      headers={"Last-Event-ID": HUGE}, timeout=10)),
        ("limit", session.get(f"{base_url}/v1/episodes", params={"limit": HUGE}, timeout=10)),
        ("cursor", session.get(f"{base_url}/v1/episodes", params={"cursor": HUGE}, timeout=10)),
        ("Range", session.get(f"{base_url}{episode['links']['artifacts']}/script.json",
                              headers={"Range": f"bytes=0-{HUGE}"}, timeout=10)),
        ("Range", session.get(f"{base_url}{episode['links']['artifacts']}/script.json",
                              headers={"Range": f"bytes={HUGE}-"}, timeout=10)),
    ]
    for named, response in answers:
        assert response.status_code in (400, 416, 422), (named, response.status_code)
        assert response.headers["content-type"] == "application/json", (named, response.text)
        error = response.json()["error"]
        assert error["status"] == response.status_code and named in error["message"], error


def test_plain_text_errors_of_the_framework_come_out_as_json(base_url: str) -> None:
    """Starlette answers a bad ``Range`` itself, in plain text; the API's shape is JSON."""
    episode = submit(base_url, KEY_B, script(premise="for bad ranges")).json()
    events(base_url + episode["links"]["events"], KEY_B)
    url = f"{base_url}{episode['links']['artifacts']}/script.json"
    for range_header, status in [("bytes=99999999-", 416), ("pages=1-2", 400),
                                 ("bytes=5-1", 400)]:
        response = client(KEY_B).get(url, headers={"Range": range_header}, timeout=10)
        assert response.status_code == status, range_header
        assert response.headers["content-type"] == "application/json", response.text
        error = response.json()["error"]
        assert error["status"] == status and "range" in error["message"].lower(), error
        if status == 416:
            assert response.headers["content-range"].startswith("bytes */")


def test_no_secret_or_server_path_in_any_answer(base_url: str, tmp_path: Path) -> None:
    episode = submit(base_url, KEY_A, script(premise="secrets")).json()
    events(base_url + episode["links"]["events"], KEY_A)
    answers = [
        client(KEY_A).get(base_url + episode["links"]["self"]).text,
        client(KEY_A).get(f"{base_url}/v1/episodes").text,
        requests.get(f"{base_url}/readyz", timeout=10).text,
        requests.get(f"{base_url}/openapi.json", timeout=10).text,
        client(None).get(f"{base_url}/v1/episodes").text,
    ]
    for text in answers:
        assert PROVIDER_SECRET not in text and KEY_A not in text and "/tmp/" not in text


# -- stream tokens ------------------------------------------------------------------------------

def test_a_token_stands_for_the_key_for_one_episode_only(base_url: str) -> None:
    """What a browser fetches by itself (a stream, a video) carries a token, never the key."""
    mine = submit(base_url, KEY_A, script(premise="tokens")).json()
    other = submit(base_url, KEY_A, script(premise="tokens, again")).json()
    events(base_url + mine["links"]["events"], KEY_A)
    answer = client(KEY_A).post(f"{base_url}{mine['links']['self']}/token")
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    assert answer.json()["expires_in_s"] > 0 and KEY_A not in token

    plain = requests.Session()  # no Authorization header at all
    stream = plain.get(f"{base_url}{mine['links']['events']}?token={token}", timeout=30)
    assert stream.status_code == 200 and "event: completed" in stream.text
    script_md = plain.get(f"{base_url}{mine['links']['artifacts']}/script.md?token={token}")
    assert script_md.status_code == 200 and script_md.text.startswith("#")
    resumed = plain.get(f"{base_url}{mine['links']['events']}?token={token}&after=2", timeout=30)
    assert "id: 1\n" not in resumed.text and "id: 3\n" in resumed.text

    for url, why in [
        (f"{base_url}{other['links']['events']}?token={token}", "another episode"),
        (f"{base_url}{mine['links']['events']}?token={token[:-3]}xyz", "not one this server"),
        (f"{base_url}{mine['links']['events']}?token=", "malformed"),
    ]:
        refused = plain.get(url, timeout=30)
        assert refused.status_code == 401, (url, refused.text)
        assert why in refused.json()["error"]["message"]
    # Only the routes a browser fetches by itself take one: the rest still need the key.
    assert plain.get(f"{base_url}{mine['links']['self']}?token={token}").status_code == 401
    # And a token is given only for the tenant's own episodes.
    assert client(KEY_B).post(f"{base_url}{mine['links']['self']}/token").status_code == 404


def test_whoami_and_the_page_with_its_files(base_url: str) -> None:
    me = client(KEY_A).get(f"{base_url}/v1/whoami").json()
    assert me["keyless"] is False and me["read_only"] is False and me["tenant"].startswith("t_")
    assert me["dashboard_url"] is None  # a keyed server links it only where an operator says
    assert client("not-a-key-0123456789").get(f"{base_url}/v1/whoami").status_code == 401
    page = requests.get(f"{base_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"  # URLs carry tokens
    for name, kind in [("studio.js", "javascript"), ("studio.css", "text/css"),
                       ("timeline.js", "javascript")]:
        asset = requests.get(f"{base_url}/studio/{name}", timeout=10)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
    for name in ["../serve_app.py", "..%2F..%2Fpyproject.toml", "index.htm", "__init__.py"]:
        assert requests.get(f"{base_url}/studio/{name}", timeout=10).status_code == 404, name


def test_an_episodes_timeline_has_a_bar_per_node_and_its_critical_path(base_url: str) -> None:
    episode = submit(base_url, KEY_A, script(premise="a timeline", scenes=3)).json()
    events(base_url + episode["links"]["events"], KEY_A)
    timeline = client(KEY_A).get(f"{base_url}{episode['links']['self']}/timeline").json()
    # 1 outline chunk, then content and dialogue per scene (no media): 7 nodes, each a bar.
    assert len(timeline["bars"]) == 7, timeline["bars"]
    assert {b["stage"] for b in timeline["bars"]} == {"outline", "content", "dialogue"}
    assert all(b["end_s"] >= b["start_s"] >= 0 for b in timeline["bars"])
    critical = [b["node"] for b in timeline["bars"] if b["critical"]]
    assert critical == timeline["critical_path"]["nodes"] and critical
    assert timeline["bottleneck"] and timeline["lower_bound_s"] > 0
    assert client(KEY_B).get(f"{base_url}{episode['links']['self']}/timeline").status_code == 404


# -- the studio page, in a real browser ---------------------------------------------------------

def until(page: Any, expression: str, timeout_s: float) -> None:
    """Wait until a JavaScript expression is true in the page. (Playwright's
    ``wait_for_function`` evaluates its text with ``eval``, which the page's CSP refuses.)"""
    wait_for(lambda: page.evaluate(expression), timeout_s, f"the page: {expression}", 0.1)


def sign_in(page: Any, base_url: str, key: str) -> None:
    page.goto(f"{base_url}/")
    page.fill("#key", key)
    page.locator("#signin button[type=submit]").click()


def test_a_bad_key_is_told_so_on_the_page(page: Any, base_url: str) -> None:
    sign_in(page, base_url, "wrong-key-0123456789abcdef")
    alert = page.locator("#signin-error")
    alert.wait_for(state="visible", timeout=10_000)
    assert "API key" in alert.inner_text()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept


def test_the_studio_signs_in_submits_watches_plays_and_cancels(page: Any, base_url: str) -> None:
    sign_in(page, base_url, KEY_D)
    page.locator("#submit-form").wait_for(state="visible", timeout=10_000)
    # The key lives in this tab's session storage, nowhere the page sends it but a header.
    assert KEY_D in page.evaluate("JSON.stringify(Object.values(sessionStorage))")
    assert page.evaluate("localStorage.length + document.cookie.length") == 0

    # One episode with media to watch and play, one long script to cancel.
    page.fill("#premises", "A lighthouse keeper adopts a seagull.")
    page.fill("#scenes", "2")
    page.fill("#lines_per_scene", "1")
    page.check("#media")
    page.locator("#submit-form button[type=submit]").click()
    rows = page.locator("#episodes [data-episode-id]")
    rows.first.wait_for(timeout=30_000)
    watched = rows.first.get_attribute("data-episode-id")

    page.fill("#premises", "Two rival food trucks at a winter festival.")
    page.fill("#scenes", "40")
    page.uncheck("#media")
    page.locator("#submit-form button[type=submit]").click()
    until(page, "document.querySelectorAll('#episodes [data-episode-id]').length >= 2", 30)
    ids = page.eval_on_selector_all("#episodes [data-episode-id]",
                                    "rows => rows.map(r => r.dataset.episodeId)")
    (cancelled,) = [i for i in ids if i != watched]

    # Cancel the long one from its own view.
    page.locator(f'#episodes [data-episode-id="{cancelled}"] button').first.click()
    page.locator("#cancel").click()
    page.wait_for_selector('#episode-view[data-status="cancelled"]', timeout=30_000)
    assert client(KEY_D).get(f"{base_url}/v1/episodes/{cancelled}").json()["status"] == \
        "cancelled"

    # Watch the other to the end, live, then play it.
    page.locator(f'#episodes [data-episode-id="{watched}"] button').first.click()
    page.wait_for_selector('#episode-view[data-status="completed"]', timeout=120_000)
    page.wait_for_selector('#episode-view[data-shown="all"]', timeout=30_000)  # files, script
    page.wait_for_selector(f'#episodes [data-episode-id="{watched}"][data-status="completed"]',
                           timeout=30_000)
    assert page.locator("#screenplay").inner_text().strip()
    assert page.locator("#downloads a").count() == len(Artifact)
    bars = page.locator("#timeline .bar").count()
    nodes = len(client(KEY_D).get(f"{base_url}/v1/episodes/{watched}/timeline").json()["bars"])
    assert bars == nodes > 0
    page.evaluate("document.querySelector('video#player').muted = true")
    page.evaluate("document.querySelector('video#player').play()")
    until(page, "document.querySelector('video#player').currentTime > 0.3", 30)
    # Seeking asks the server for a range of the file, with the episode's token.
    page.evaluate("document.querySelector('video#player').currentTime = 0.1")
    until(page, "document.querySelector('video#player').currentTime > 0.2", 30)
    src = page.get_attribute("video#player", "src") or ""
    assert "token=" in src and KEY_D not in src
    if os.environ.get("SAVE_SCREENSHOTS") == "1":  # docs/: `make screenshots`
        page.screenshot(path=str(DOCS / "studio.png"), full_page=True)
