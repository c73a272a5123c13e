"""The Range header of a download from object storage: one range served, the rest whole."""

from __future__ import annotations

import pytest

from pipelines.byte_ranges import ByteRange, Unsatisfiable, byte_range


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("", None),
    ("bytes=0-99", ByteRange(0, 99)),
    ("bytes=100-", ByteRange(100, 999)),
    ("bytes=-100", ByteRange(900, 999)),
    ("bytes=-5000", ByteRange(0, 999)),  # a suffix longer than the file: all of it
    ("bytes=990-5000", ByteRange(990, 999)),  # an end past the file: cut to it
    ("bytes=0-0", ByteRange(0, 0)),
    ("bytes=0-99,200-299", None),  # several ranges: the whole file
    ("items=0-5", None),  # another unit: the whole file
    ("bytes=50-10", None),  # end before start: malformed, the whole file
    ("bytes=-", None),
])
def test_one_range_is_served_and_anything_else_is_the_whole_file(
        header: str | None, expected: ByteRange | None) -> None:
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0",
                                    "bytes=" + "9" * 5000 + "-"])
def test_a_range_past_the_end_cannot_be_served(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, 1000)


def test_content_range_names_the_span_and_the_size() -> None:
    span = ByteRange(100, 1099)
    assert (span.length, span.content_range(5000)) == (1000, "bytes 100-1099/5000")
