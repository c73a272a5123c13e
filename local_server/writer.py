"""Plausible script text from a prompt's own words: titles, names, places, lines, directions.

What to write is chosen from a field's name (``title`` gets a title, ``speaker`` a name from the
cast, ``text`` a line of dialogue), falling back on the field's description; the words come from
the prompt (its ``Premise:`` line when there is one) and a random source fixed per request, so
answers differ across prompts and seeds yet replay exactly.
"""

from __future__ import annotations

import functools
import random
import re

FIRST_NAMES = (
    "Ada", "Ben", "Cleo", "Dev", "Esme", "Felix", "Greta", "Hugo", "Iris", "Jonah", "Kira",
    "Leon", "Maya", "Nico", "Odette", "Priya", "Quinn", "Rafa", "Sana", "Theo", "Uma", "Victor",
    "Wren", "Xavi", "Yara", "Zane",
)
PLACES = (
    "a rain-streaked rooftop", "the back room of a diner", "a lighthouse gallery",
    "a crowded night market", "an empty train platform", "a cluttered workshop",
    "the edge of a frozen lake", "a hospital corridor at 3 a.m.", "a radio booth",
    "a ferry deck in fog", "a greenhouse full of orchids", "a basement archive",
)
ADJECTIVES = (
    "Quiet", "Broken", "Golden", "Last", "Hidden", "Restless", "Borrowed", "Silver", "Long",
    "Crooked", "Bright", "Secret",
)
ROLES = (
    "night-shift nurse", "retired detective", "line cook", "radio host", "ferry captain",
    "runaway teenager", "small-town mayor", "stage magician", "locksmith", "archivist",
)
MOODS = ("tense", "hopeful", "bittersweet", "playful", "ominous", "tender", "frantic", "wry")
GENRES = ("drama", "comedy", "thriller", "mystery", "romance", "science fiction", "noir")
TIMES_OF_DAY = ("DAY", "NIGHT", "DAWN", "DUSK", "LATER", "CONTINUOUS")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer")
DIRECTIONS = (
    "quietly", "with a crooked smile", "not looking up", "a beat too fast", "laughing",
    "under their breath", "stepping closer", "after a long pause",
)
OPENERS = (
    "You said the {w} would hold.", "Tell me the truth about the {w}.",
    "I kept the {w}, you know.", "We don't have time for the {w}.",
    "If the {w} is gone, then what?", "Nobody trusts the {w} anymore.",
    "I've been thinking about the {w} all night.", "Give me one good reason about the {w}.",
)
# Words of instructions rather than of a story; never used as the story's words.
STOPWORDS = frozenset({
    "the", "and", "with", "that", "this", "from", "into", "their", "there", "they", "have",
    "each", "scene", "scenes", "write", "answer", "json", "schema", "follows", "exactly",
    "episode", "outline", "characters", "setting", "summary", "title", "lines", "line",
    "dialogue", "what", "when", "which", "before", "after", "about", "your", "give", "every",
    "premise", "style", "mood", "action", "speaker", "direction", "short", "stage", "keep",
    "consistent", "came", "writers", "room", "television", "series", "given", "will",
    "were", "been", "them", "then", "than", "while", "where", "small", "stuck", "together",
    "starts", "receiving", "years", "past", "until", "should", "would", "could", "must",
    "please", "return", "only", "field", "fields", "format", "object", "string", "tell",
    "story", "hello", "make", "create", "generate", "describe", "list", "show", "explain",
    "help", "want", "need", "like", "just", "some", "more", "other", "also", "here",
})
_WORD = re.compile(r"[A-Za-z][a-z]{3,}")
_PREMISE = re.compile(r"Premise:\s*([^\n]+)")
_CAST = re.compile(r"(?:Characters?:|\(with)\s*([^\n)]+)")
_NAME = re.compile(r"[A-Z][\w'-]{0,30}")


class Writer:
    """Writes the strings of one answer, keeping its cast of characters and the prompt's words."""

    def __init__(self, rng: random.Random, prompt: str) -> None:
        self.rng = rng
        # The premise carries the story's own words; the rest of a prompt is mostly instructions.
        premise = _PREMISE.search(prompt)
        source = premise.group(1) if premise else prompt
        words = [w.lower() for w in _WORD.findall(source)]
        self.words = [w for w in words if w not in STOPWORDS] or ["plan"]
        named = [n.strip() for group in _CAST.findall(prompt) for n in group.split(",")]
        cast = [n for n in dict.fromkeys(named) if _NAME.fullmatch(n)]
        # Two at least, so nobody confronts themselves.
        extra = [n for n in rng.sample(FIRST_NAMES, k=4) if n not in cast]
        self.cast = cast + extra[: max(0, 2 - len(cast))] if cast else extra
        self._last_speaker = ""

    # -- pieces ---------------------------------------------------------------------------------

    def word(self) -> str:
        return self.rng.choice(self.words)

    def title(self) -> str:
        return f"The {self.rng.choice(ADJECTIVES)} {self.word().capitalize()}"

    def character(self, index: int = 0) -> str:
        """The ``index``-th member of the cast (1-based, wrapping), or anyone when 0: a list of
        characters then names each once before repeating."""
        if index:
            return self.cast[(index - 1) % len(self.cast)]
        return self.rng.choice(self.cast)

    def speaker(self) -> str:
        """Someone other than the last speaker: a dialogue goes back and forth."""
        others = [n for n in self.cast if n != self._last_speaker] or self.cast
        self._last_speaker = self.rng.choice(others)
        return self._last_speaker

    def sentence(self) -> str:
        a, b = self.rng.sample(self.cast, 2) if len(self.cast) > 1 else (self.cast[0],) * 2
        templates = (
            f"{a} confronts {b} about the {self.word()} while the {self.word()} slips away.",
            f"{a} and {b} hide the {self.word()} as {self.word()} closes in.",
            f"{a} finally admits the truth about the {self.word()}, and {b} has to choose.",
            f"Tension over the {self.word()} turns into a {self.rng.choice(MOODS)} plan.",
        )
        return self.rng.choice(templates)

    def sentences(self, low: int = 1, high: int = 3) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(low, high)))

    def line(self) -> str:
        opener = self.rng.choice(OPENERS).format(w=self.word())
        return opener if self.rng.random() < 0.5 else f"{opener} {self.sentence()}"

    def portrait(self) -> str:
        mood = self.rng.choice(MOODS)
        article = "An" if mood[0] in "aeiou" else "A"
        return (f"{article} {mood} {self.rng.choice(ROLES)} who will do anything to protect "
                f"the {self.word()}.")

    def slug(self, index: int = 0) -> str:
        return f"{self.word()}-{index or self.rng.randint(1, 999)}"

    # -- by field name --------------------------------------------------------------------------

    def string_for(self, name: str, description: str = "", index: int = 0,
                   siblings: frozenset[str] = frozenset()) -> str:
        """A string for the field ``name``: its name decides what to write, else its schema
        ``description``, else a sentence. ``index`` is the 1-based position of the enclosing
        array item (0 outside arrays); ``siblings`` are the other fields of the same object."""
        kind = kind_of_name(name) or kind_of_description(description)
        if kind == "description" and name.lower() == "description" and "name" not in siblings:
            kind = "summary"  # a bare description beside no name: a scene's, not a character's
        return self._write(kind, index)

    def _write(self, kind: str | None, index: int) -> str:
        rng = self.rng
        match kind:
            case "speaker":
                return self.speaker()
            case "character":
                return self.character(index)
            case "id":
                return self.slug(index)
            case "title":
                return self.title()
            case "description":
                return self.portrait()
            case "summary":
                return self.sentences()
            case "place":
                return rng.choice(PLACES)
            case "mood":
                return rng.choice(MOODS)
            case "genre":
                return rng.choice(GENRES)
            case "time":
                return rng.choice(TIMES_OF_DAY)
            case "voice":
                return rng.choice(VOICES)
            case "direction":
                return rng.choice(DIRECTIONS)
            case "line":
                return self.line()
            case _:
                return self.sentence()


# What a field is, from the words of its name: the first rule with a word in the name wins, so
# ``character_description`` is a description and ``scene_title`` a title.
RULES: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (kind, frozenset(words.split())) for kind, words in (
        ("speaker", "speaker speakers"),
        ("id", "id uuid slug"),
        ("title", "title titles headline heading"),
        ("summary", "logline"),
        ("description", "description bio persona personality backstory portrait"),
        ("summary", "summary synopsis plot beat beats action actions event events outline recap "
                    "premise"),
        ("place", "setting settings location locations place places where"),
        ("mood", "mood tone emotion feeling atmosphere"),
        ("genre", "genre style"),
        ("time", "time"),
        ("voice", "voice"),
        ("direction", "direction directions parenthetical delivery"),
        ("character", "name names character characters cast protagonist who"),
        ("line", "text line lines speech dialogue quote content says utterance words"),
    )
)
# Words that name a kind in a field's name but are too common in prose to decide a description.
_VAGUE = frozenset({"words", "content", "who", "where", "time"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_TOKEN = re.compile(r"[a-z]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(_CAMEL.sub("_", text).lower())


@functools.lru_cache(maxsize=4096)  # the same schemas come back request after request
def kind_of_name(name: str) -> str | None:
    """The kind of text a field named ``name`` holds, or None when its name says nothing."""
    words = set(_tokens(name))
    return next((kind for kind, keys in RULES if words & keys), None)


@functools.lru_cache(maxsize=4096)
def kind_of_description(description: str) -> str | None:
    """The same from a schema description: its earliest telling word decides (``A line of
    dialogue spoken by a character`` is a line)."""
    for word in _tokens(description):
        for kind, keys in RULES:
            if word in keys and word not in _VAGUE:
                return kind
    return None
