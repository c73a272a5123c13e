"""What the media nodes ask for: each character's voice, the picture and clip prompts. Pure.
(Where each file goes is ``EpisodeFolder``'s business.)"""

from __future__ import annotations

import hashlib

from pipelines.models import EpisodeRequest, SceneContent, SceneOutline

# OpenAI's voice names; the bundled server speaks each with a different eSpeak voice.
CLIP_SECONDS = "4"  # a scene's clip, as the video API takes it (a string)
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
          "verse")


def voice_for(request: EpisodeRequest, speaker: str) -> str:
    """The request's voice for a character, else one fixed by the name: the same character
    keeps the same voice in every scene (and every run)."""
    for character in request.characters:
        if character.voice and character.name.casefold() == speaker.casefold():
            return character.voice
    digest = hashlib.blake2b(speaker.casefold().encode(), digest_size=2).digest()
    return VOICES[int.from_bytes(digest, "big") % len(VOICES)]


def image_prompt(request: EpisodeRequest, outline: SceneOutline, content: SceneContent) -> str:
    return (f"{outline.title}. {content.setting} {content.mood} mood. Style: {request.style}, "
            f"cinematic still, no text. Characters: {', '.join(outline.characters)}.")


def clip_prompt(outline: SceneOutline, content: SceneContent) -> str:
    return f"{outline.title}. {content.action}"[:2000]
