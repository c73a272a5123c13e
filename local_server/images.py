"""Offline images: a scene card drawn with Pillow — colours, title, setting and characters taken
from the prompt, so each scene looks different and says what it shows."""

from __future__ import annotations

import hashlib
import io
import re
import textwrap

from PIL import Image, ImageDraw, ImageFont

SIZES = {"1024x1024": (1024, 1024), "1536x1024": (1536, 1024), "1024x1536": (1024, 1536),
         "1792x1024": (1792, 1024), "1024x1792": (1024, 1792), "512x512": (512, 512),
         "256x256": (256, 256)}
DEFAULT_SIZE = "1536x1024"


def _palette(prompt: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    digest = hashlib.sha256(prompt.encode()).digest()
    top = (40 + digest[0] % 120, 40 + digest[1] % 120, 60 + digest[2] % 140)
    bottom = (digest[3] % 90, digest[4] % 90, digest[5] % 110)
    return top, bottom


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def scene_card(prompt: str, size: str = DEFAULT_SIZE) -> bytes:
    """A PNG of ``size`` (one of ``SIZES``) for ``prompt``."""
    width, height = SIZES[size]
    top, bottom = _palette(prompt)
    image = Image.new("RGB", (width, height), top)
    draw = ImageDraw.Draw(image)
    for y in range(height):  # a vertical gradient, cheap and never flat
        t = y / max(1, height - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (width, y)], fill=colour)
    digest = hashlib.sha256(prompt.encode()).digest()
    for i in range(6):  # a few soft shapes: a skyline of the scene
        x = digest[6 + i] / 255 * width
        w = width * (0.08 + digest[12 + i] / 255 * 0.12)
        h = height * (0.15 + digest[18 + i] / 255 * 0.35)
        shade = tuple(max(0, c - 25) for c in bottom)
        draw.rectangle([x, height - h, x + w, height], fill=shade)
    title, rest = _title_and_rest(prompt)
    # Wide margins: a clip pans across the picture and crops a tenth of each edge.
    left, top = width // 7, height // 6
    draw.text((left, top), title, font=_font(max(18, width // 26)), fill=(250, 245, 235))
    body = textwrap.fill(rest, width=max(20, width // 26))
    draw.multiline_text((left, top + width // 14), body, font=_font(max(12, width // 52)),
                        fill=(235, 230, 220), spacing=6)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _title_and_rest(prompt: str) -> tuple[str, str]:
    sentences = re.split(r"(?<=[.!?])\s+", prompt.strip(), maxsplit=1)
    title = sentences[0][:60] or "Untitled scene"
    rest = sentences[1] if len(sentences) > 1 else ""
    return title, rest[:400]
