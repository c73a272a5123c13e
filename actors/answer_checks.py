"""What a provider's answer must be before it is accepted: speech is audio of the format asked
for, a picture an image, a clip a video, a job's answer a JSON object of a job's shape. Anything
else is a ``MalformedResponse``: retried like a 5xx, counted, and reported with what came back.
Pure: bytes in, bytes (or the job) out."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.errors import MalformedResponse

JOB_STATES = ("queued", "in_progress", "completed", "failed")
SHOWN_BYTES = 40


def _is_wav(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def _is_mp3(data: bytes) -> bool:
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


# The formats a speech request may ask for, by how their files begin.
AUDIO: dict[str, Callable[[bytes], bool]] = {
    "wav": _is_wav,
    "mp3": _is_mp3,
    "flac": lambda data: data[:4] == b"fLaC",
    "opus": lambda data: data[:4] == b"OggS",
    "aac": lambda data: len(data) > 1 and data[0] == 0xFF and data[1] & 0xF0 == 0xF0,
    "pcm": lambda data: len(data) > 0 and len(data) % 2 == 0,  # raw 16-bit samples
}


def is_image(data: bytes) -> bool:
    return (data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff"
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"))


def is_video(data: bytes) -> bool:
    return data[4:8] == b"ftyp"  # an MP4 (ISO base media) file


def described(data: bytes, headers: Mapping[str, str]) -> str:
    """What came back, for the error: its size, its content type and its first bytes."""
    kind = headers.get("content-type", "no content type")
    first = data[:SHOWN_BYTES].decode("ascii", errors="replace")
    shown = "".join(c if c.isprintable() else "." for c in first)
    more = "…" if len(data) > SHOWN_BYTES else ""
    return f"{len(data)} bytes of {kind}, starting {shown!r}{more}"


def _malformed(what: str, data: bytes, headers: Mapping[str, str],
               status: int | None) -> MalformedResponse:
    return MalformedResponse(f"the answer is not {what} ({described(data, headers)})",
                             status=status, request_id=headers.get("x-request-id"))


def audio(data: bytes, fmt: str, headers: Mapping[str, str], status: int | None = None
          ) -> bytes:
    looks_right = AUDIO.get(fmt)
    if looks_right is None or not looks_right(data):
        raise _malformed(f"{fmt.upper()} audio", data, headers, status)
    return data


def image(data: bytes, headers: Mapping[str, str], status: int | None = None) -> bytes:
    if not is_image(data):
        raise _malformed("an image (PNG, JPEG or WebP)", data, headers, status)
    return data


def video(data: bytes, headers: Mapping[str, str], status: int | None = None) -> bytes:
    if not is_video(data):
        raise _malformed("an MP4 video", data, headers, status)
    return data


def job(data: bytes, headers: Mapping[str, str], status: int | None = None) -> dict[str, Any]:
    """A video job as the provider describes it: an object with an id and a known status."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        body = None
    if (not isinstance(body, dict) or not isinstance(body.get("id"), str)
            or body.get("status") not in JOB_STATES):
        raise _malformed("a video job", data, headers, status)
    return body
