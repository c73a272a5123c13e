"""Speech encoded as each of OpenAI's ``response_format`` values, from eSpeak NG's 16-bit mono
PCM: ``wav`` and ``pcm`` here, ``mp3``, ``opus`` (in Ogg), ``aac`` (ADTS) and ``flac`` by the
ffmpeg that the ``imageio-ffmpeg`` wheel ships (no system package).

Real encodings, not relabelled WAV: a client that checks or decodes what it was sent (or is sent
another format than it asked, ``--speech-format``) must meet what a provider sends.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
import wave
from pathlib import Path

import imageio_ffmpeg

CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
                 "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
# ffmpeg's output options per format. Opus takes 8, 12, 16, 24 or 48 kHz, not eSpeak's 22.05 kHz:
# 24 kHz, as OpenAI's speech is.
_ENCODERS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    "opus": ["-ar", "24000", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "flac": ["-c:a", "flac", "-f", "flac"],
}
ENCODE_TIMEOUT_S = 60.0


def encode(pcm: bytes, sample_rate: int, fmt: str) -> bytes:
    """16-bit mono little-endian ``pcm`` at ``sample_rate`` Hz as ``fmt`` (a key of
    ``CONTENT_TYPES``). Blocking: run it in a worker thread (whose low priority the ffmpeg child
    inherits, as Linux gives a child its forking thread's nice value)."""
    if fmt == "pcm":
        return pcm
    if fmt == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(sample_rate)
            file.writeframes(pcm)
        return out.getvalue()
    # Into a file, not a pipe: ffmpeg seeks back to finish a FLAC's header (its length) and an
    # MP3's Xing frame, which a pipe would leave without.
    with tempfile.TemporaryDirectory(prefix="showrunner-speech-") as folder:
        target = Path(folder) / f"speech.{fmt}"
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error",
                   "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
                   *_ENCODERS[fmt], str(target)]
        done = subprocess.run(command, input=pcm, capture_output=True, timeout=ENCODE_TIMEOUT_S)
        if done.returncode != 0 or not target.exists():
            raise RuntimeError(f"ffmpeg could not encode {fmt}: "
                               f"{done.stderr.decode(errors='replace')[-300:]}")
        return target.read_bytes()
