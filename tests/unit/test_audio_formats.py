"""Speech in another format than asked for is converted, by the wheel's ffmpeg; what is not
audio is refused as a malformed answer. The audio is made by that ffmpeg, from a sine."""

from __future__ import annotations

import functools
import io
import subprocess
import wave

import imageio_ffmpeg
import pytest

from actors import audio_formats
from actors.audio_formats import FORMATS, convert, sniff
from pipelines.errors import MalformedResponse

SECONDS = 1.0
MADE_WITH = {
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "opus": ["-c:a", "libopus", "-f", "ogg"],
    "vorbis": ["-c:a", "libvorbis", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-f", "adts"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "pcm": ["-c:a", "pcm_s16le", "-ar", "24000", "-ac", "1", "-f", "s16le"],
}
READ_AS = {"wav": "wav", "mp3": "mp3", "opus": "ogg", "vorbis": "ogg", "aac": "aac",
           "flac": "flac"}
JSON = {"content-type": "application/json", "x-request-id": "req_3"}


def ffmpeg(*args: str, data: bytes = b"") -> bytes:
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel",
                           "error", *args, "pipe:1"], input=data, capture_output=True,
                          check=True, timeout=60).stdout


@functools.cache
def speech(fmt: str, rate: int = 24_000) -> bytes:
    return ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}:sample_rate={rate}",
                  *MADE_WITH[fmt])


def seconds(data: bytes, fmt: str) -> float:
    """How long ``data`` plays, decoded by ffmpeg on its own (not by the code under test)."""
    if fmt == "pcm":
        samples = data
    else:
        samples = ffmpeg("-f", READ_AS[fmt], "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar",
                         "8000", data=data)
    rate = 24_000 if fmt == "pcm" else 8000
    return len(samples) / 2 / rate


@pytest.mark.parametrize("fmt", [*READ_AS])
def test_each_format_is_told_by_its_first_bytes(fmt: str) -> None:
    assert sniff(speech(fmt)) == fmt


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000])
def test_mpeg_frames_without_a_tag_are_told_apart_by_their_headers(rate: int) -> None:
    """Two bytes of frame sync begin both MP3 and ADTS (AAC) frames, and could begin raw
    samples: the fields of the first frame's header, and a second frame where it says, tell."""
    bare_mp3 = ffmpeg("-f", "lavfi", "-i", f"sine=duration=1:sample_rate={rate}",
                      "-c:a", "libmp3lame", "-id3v2_version", "0", "-f", "mp3")
    assert bare_mp3[:3] != b"ID3" and sniff(bare_mp3) == "mp3"
    adts = ffmpeg("-f", "lavfi", "-i", f"sine=duration=1:sample_rate={rate}", "-c:a", "aac",
                  "-f", "adts")
    assert sniff(adts) == "aac"
    assert sniff(bare_mp3[:4] + b"\0" * 600) is None  # one frame header alone is not proof


@pytest.mark.parametrize("source", [*READ_AS])
@pytest.mark.parametrize("target", FORMATS)
def test_speech_in_another_format_is_converted(source: str, target: str) -> None:
    spoken = convert(speech(source), target, {})
    if target == "pcm":  # headerless: its length is its duration
        assert sniff(spoken) is None and len(spoken) % 2 == 0
    else:
        assert sniff(spoken) == target
    # Encoders pad a frame or two (AAC's priming, MP3's last frame).
    assert seconds(spoken, target) == pytest.approx(SECONDS, abs=0.15)


@pytest.mark.parametrize("fmt", [*READ_AS])
def test_speech_already_in_the_format_is_returned_as_it_is(
        fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spoken, pcm = speech(fmt), speech("pcm")

    def no_ffmpeg(*args: object, **kwargs: object) -> None:
        raise AssertionError("ffmpeg ran for speech already in the format asked for")

    monkeypatch.setattr(audio_formats.subprocess, "run", no_ffmpeg)
    if fmt in FORMATS:
        assert convert(spoken, fmt, {}) is spoken
    assert convert(pcm, "pcm", {}) is pcm  # raw samples: nothing to tell them by but the ask


def test_a_converted_wav_has_its_sizes_written() -> None:
    """ffmpeg writing to a pipe cannot go back to fill in the sizes; readers need them."""
    spoken = convert(speech("mp3"), "wav", {})
    assert spoken[36:40] == b"data"  # the canonical 44-byte header, no tags before the data
    with wave.open(io.BytesIO(spoken)) as file:
        assert file.getnframes() == (len(spoken) - 44) // 2
        assert file.getnframes() / file.getframerate() == pytest.approx(SECONDS, abs=0.1)


@pytest.mark.parametrize("body", [
    b'{"error": {"message": "the voice is not available"}}',
    b"<html><body>502 Bad Gateway</body></html>",
    b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
    b"",
])
def test_what_is_not_audio_is_a_malformed_answer(body: bytes) -> None:
    with pytest.raises(MalformedResponse) as caught:
        convert(body, "mp3", JSON, 200)
    err = caught.value
    assert "the speech is not MP3 audio, nor audio of a format it can be made from" in str(err)
    assert f"{len(body)} bytes of application/json" in str(err)
    assert err.status == 200 and err.request_id == "req_3" and err.retryable


def test_audio_ffmpeg_cannot_read_is_a_malformed_answer() -> None:
    broken = b"fLaC" + b"\x07" * 500  # a FLAC magic word over nothing FLAC
    with pytest.raises(MalformedResponse, match=r"not flac audio that ffmpeg can read \(exit"):
        convert(broken, "wav", JSON)


def test_a_conversion_past_its_timeout_is_a_malformed_answer() -> None:
    long_speech = ffmpeg("-f", "lavfi", "-i", "sine=duration=600:sample_rate=48000",
                         "-c:a", "flac", "-f", "flac")
    with pytest.raises(MalformedResponse, match="converts to mp3 within 0.01 s"):
        convert(long_speech, "mp3", {}, timeout_s=0.01)


def test_an_unknown_format_is_our_mistake_not_the_providers() -> None:
    with pytest.raises(ValueError, match="no such speech format: 'ogg'"):
        convert(speech("wav"), "ogg", {})
