"""A provider's answer is accepted only if it is what was asked for."""

from __future__ import annotations

import io
import json
import wave

import pytest
from PIL import Image

from actors import answer_checks
from pipelines.errors import MalformedResponse

BROKEN = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind'
JSON = {"content-type": "application/json", "x-request-id": "req_9"}


def wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(24_000)
        file.writeframes(b"\0\0" * 2400)
    return out.getvalue()


def picture(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, kind)
    return out.getvalue()


def test_speech_must_be_audio_of_the_format_asked_for() -> None:
    assert answer_checks.audio(wav(), "wav", {}) == wav()
    with pytest.raises(MalformedResponse) as caught:
        answer_checks.audio(BROKEN, "wav", JSON, 200)
    err = caught.value
    assert "not WAV audio" in str(err) and f"{len(BROKEN)} bytes of application/json" in str(err)
    assert "chatcmpl-broken" in str(err) and err.request_id == "req_9" and err.status == 200
    assert err.retryable  # retried like a 5xx
    with pytest.raises(MalformedResponse, match="not MP3 audio"):
        answer_checks.audio(wav(), "mp3", {})
    with pytest.raises(MalformedResponse):
        answer_checks.audio(wav(), "an unknown format", {})


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_pictures_are_png_jpeg_or_webp(kind: str) -> None:
    assert answer_checks.image(picture(kind), {}) == picture(kind)


def test_anything_else_is_not_a_picture_nor_a_clip() -> None:
    for data in (b"", BROKEN, wav(), b"<html>no image</html>"):
        with pytest.raises(MalformedResponse, match="not an image"):
            answer_checks.image(data, JSON)
        with pytest.raises(MalformedResponse, match="not an MP4 video"):
            answer_checks.video(data, JSON)
    assert answer_checks.video(b"\0\0\0\x18ftypmp42" + b"\0" * 16, {})


def test_a_job_answer_is_an_object_with_an_id_and_a_known_status() -> None:
    job = {"id": "video_1", "status": "in_progress", "progress": 40}
    assert answer_checks.job(json.dumps(job).encode(), {}) == job
    for body in (BROKEN, b"[]", b'{"status": "queued"}', b'{"id": "v", "status": "done"}',
                 b"\xff\xfe"):
        with pytest.raises(MalformedResponse, match="not a video job"):
            answer_checks.job(body, JSON)


def test_what_came_back_is_shown_short_and_printable() -> None:
    shown = answer_checks.described(b"\x00\x01ab" + b"x" * 100, {})
    assert shown.startswith("104 bytes of no content type, starting '..ab") and shown.endswith("…")
