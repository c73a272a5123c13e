"""Speech in the format asked for, even from a provider that answers in another: a local server
that only makes WAV, or one that ignores ``response_format``, gets its answer converted instead
of failed.

``sniff`` names the container from the bytes; ``convert`` runs the ``imageio-ffmpeg`` wheel's
ffmpeg (no system package needed) over pipes, without temporary files, under a timeout. It is
blocking: call it through ``asyncio.to_thread``. An answer that is not audio, or that ffmpeg
cannot read, is a ``MalformedResponse``, as ``actors.answer_checks`` reports any other.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Mapping

import imageio_ffmpeg

from actors.answer_checks import described
from pipelines.errors import MalformedResponse

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONVERT_TIMEOUT_S = 60.0
# What OpenAI's ``pcm`` is: raw 16-bit little-endian samples, 24 kHz, mono, with no header.
PCM_RATE = 24_000

# ffmpeg's demuxer for each container sniffed: named, so ffmpeg never probes the bytes with
# any of its other demuxers (the answer comes from a remote server).
_DEMUXERS = {"wav": "wav", "mp3": "mp3", "opus": "ogg", "vorbis": "ogg", "flac": "flac",
             "aac": "aac"}
_ENCODERS = {
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "opus": ["-c:a", "libopus", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-f", "adts"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "pcm": ["-c:a", "pcm_s16le", "-ar", str(PCM_RATE), "-ac", "1", "-f", "s16le"],
}
SHOWN_ERROR_CHARS = 300


def _tagged(data: bytes) -> str | None:
    """The container, from a magic word at the start: certain."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:3] == b"ID3":
        return "mp3"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS" and len(data) > 27:
        # The first page's first packet says which codec the Ogg stream holds.
        packet = data[27 + data[26]:]
        if packet[:8] == b"OpusHead":
            return "opus"
        if packet[:7] == b"\x01vorbis":
            return "vorbis"
    return None


def _adts_length(data: bytes, at: int) -> int | None:
    """The length of the ADTS (AAC) frame at ``at``, if a valid header is there."""
    head = data[at:at + 7]
    if len(head) < 7 or head[0] != 0xFF or head[1] & 0xF6 != 0xF0 or (head[2] >> 2) & 0xF > 12:
        return None
    length = (head[3] & 0x3) << 11 | head[4] << 3 | head[5] >> 5
    return length if length >= 7 else None


_MP3_KBPS = {  # by MPEG version bits: MPEG-1, else MPEG-2 and 2.5; index 0 (free) is unknowable
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_HZ = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_length(data: bytes, at: int) -> int | None:
    """The length of the MPEG audio layer III frame at ``at``, if a valid header is there."""
    head = data[at:at + 4]
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0 or (head[1] >> 1) & 3 != 1:
        return None
    version, rate, bitrate = (head[1] >> 3) & 3, (head[2] >> 2) & 3, head[2] >> 4
    if version == 1 or rate == 3 or bitrate in (0, 15):
        return None
    kbps = _MP3_KBPS[3 if version == 3 else 2][bitrate]
    per_frame = 144 if version == 3 else 72
    return per_frame * kbps * 1000 // _MP3_HZ[version][rate] + (head[2] >> 1 & 1)


def _framed(data: bytes) -> str | None:
    """The stream, from its first two frames' headers: one header is only two bytes of sync,
    which raw samples can hold by chance; the next header where the first one says is not."""
    for name, length_at in (("aac", _adts_length), ("mp3", _mp3_length)):
        length = length_at(data, 0)
        if length is not None and (length == len(data) or length_at(data, length)):
            return name
    return None


def sniff(data: bytes) -> str | None:
    """The audio format ``data`` is in: one of ``FORMATS`` but ``pcm`` (raw samples have no
    header to tell), or ``vorbis`` (Ogg Vorbis); None if it is none of them."""
    return _tagged(data) or _framed(data)


def convert(data: bytes, fmt: str, headers: Mapping[str, str], status: int | None = None, *,
            timeout_s: float = CONVERT_TIMEOUT_S) -> bytes:
    """``data``, a provider's speech, in the format ``fmt`` (one of ``FORMATS``): unchanged if
    it is in that format already, else converted by ffmpeg. ``headers`` and ``status`` are the
    answer's, for the error if ``data`` is not audio or ffmpeg cannot convert it in
    ``timeout_s``."""
    if fmt not in _ENCODERS:
        raise ValueError(f"no such speech format: {fmt!r} (one of {', '.join(FORMATS)})")
    found = sniff(data)
    if found == fmt or (found is None and fmt == "pcm"):
        return data
    if found is None:
        raise _malformed(f"{fmt.upper()} audio, nor audio of a format it can be made from",
                         data, headers, status)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error",
               "-f", _DEMUXERS[found], "-i", "pipe:0",
               # One thread: the provider's event loop runs on the CPUs beside it. No tags and
               # a canonical 44-byte WAV header: readers that assume one exist.
               "-map", "0:a:0", "-map_metadata", "-1", "-fflags", "+bitexact", "-threads", "1",
               *_ENCODERS[fmt], "pipe:1"]
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:  # run() has killed it
        raise _malformed(f"{found} audio that ffmpeg converts to {fmt} within {timeout_s:g} s",
                         data, headers, status) from err
    if done.returncode != 0 or not done.stdout:
        said = done.stderr.decode(errors="replace").strip()[-SHOWN_ERROR_CHARS:]
        raise _malformed(f"{found} audio that ffmpeg can read (exit {done.returncode}: "
                         f"{said or 'no audio out'})", data, headers, status)
    return _with_wav_sizes(done.stdout) if fmt == "wav" else done.stdout


def _with_wav_sizes(data: bytes) -> bytes:
    """A WAV file with its RIFF and data sizes written: ffmpeg cannot seek back on a pipe to
    fill them in, and leaves 0xFFFFFFFF, which some readers take as 4 GiB of samples."""
    out = bytearray(data)
    struct.pack_into("<I", out, 4, len(out) - 8)
    at = 12
    while at + 8 <= len(out):
        chunk, size = out[at:at + 4], struct.unpack_from("<I", out, at + 4)[0]
        if chunk == b"data":
            struct.pack_into("<I", out, at + 4, len(out) - at - 8)
            break
        at += 8 + size + (size & 1)  # chunks are padded to an even length
    return bytes(out)


def _malformed(what: str, data: bytes, headers: Mapping[str, str],
               status: int | None) -> MalformedResponse:
    return MalformedResponse(f"the speech is not {what} ({described(data, headers)})",
                             status=status, request_id=headers.get("x-request-id"))
