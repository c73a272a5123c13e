"""Offline speech with eSpeak NG, through ctypes on the library the ``espeakng-loader`` wheel
ships (with its data): no system package, nothing downloaded.

eSpeak NG keeps global state, so synthesis is serialised behind one lock and run in a worker
thread by the caller, off the server's event loop.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import espeakng_loader

from local_server.audio import encode

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    language: str
    pitch: int  # 0-99, eSpeak's default is 50
    rate: int  # words per minute, eSpeak's default is 175


# OpenAI's voice names, each given a distinct eSpeak voice so characters sound apart.
VOICES: dict[str, Voice] = {
    "alloy": Voice("en-us", 50, 170),
    "ash": Voice("en-us", 35, 165),
    "ballad": Voice("en-gb", 45, 160),
    "coral": Voice("en-us", 70, 175),
    "echo": Voice("en-gb", 30, 170),
    "fable": Voice("en-gb", 60, 165),
    "nova": Voice("en-us", 75, 180),
    "onyx": Voice("en-us", 20, 160),
    "sage": Voice("en-gb", 55, 170),
    "shimmer": Voice("en-us", 85, 175),
    "verse": Voice("en-gb", 40, 175),
}


_INSTANCE: Speaker | None = None
_INSTANCE_LOCK = threading.Lock()


def speaker() -> Speaker:
    """The process's one ``Speaker``: eSpeak NG has one global state and one callback, so a
    second initialisation would steal the first one's audio."""
    global _INSTANCE
    with _INSTANCE_LOCK:
        if _INSTANCE is None:
            _INSTANCE = Speaker()
        return _INSTANCE


class Speaker:
    """Turns text into 16-bit mono PCM at ``sample_rate`` Hz. Use ``speaker()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.sample_rate <= 0:
            raise RuntimeError("eSpeak NG could not start")
        self._chunks: list[bytes] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: C holds only a pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: int) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # go on

    def pcm(self, text: str, voice: str, speed: float = 1.0) -> bytes:
        chosen = VOICES.get(voice, VOICES["alloy"])
        encoded = text.encode("utf-8") + b"\0"
        with self._lock:
            self._chunks = []
            self._lib.espeak_SetVoiceByName(chosen.language.encode())
            self._lib.espeak_SetParameter(_PITCH, chosen.pitch, 0)
            self._lib.espeak_SetParameter(_RATE, max(80, min(450, int(chosen.rate * speed))), 0)
            status = self._lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0,
                                            _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"eSpeak NG failed to speak (error {status})")
            return b"".join(self._chunks)

    def wav(self, text: str, voice: str, speed: float = 1.0) -> bytes:
        return self.speak(text, voice, speed, "wav")

    def speak(self, text: str, voice: str, speed: float = 1.0, fmt: str = "wav") -> bytes:
        """The speech encoded as ``fmt``, one of ``audio.CONTENT_TYPES``."""
        return encode(self.pcm(text, voice, speed), self.sample_rate, fmt)
