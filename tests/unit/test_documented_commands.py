"""Which documented shell blocks are run and which say why not: the rules, and this repository.

The integration test (tests/commands/test_documented_commands.py) runs the blocks named in
``RUN_IN_TESTS``; this one, without Ray or processes, makes sure nothing else slips through: a
new shell block in the README or docs/ must be run there or carry a reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.markdown_blocks import (
    AWAITING_MARKERS,
    RUN_IN_TESTS,
    DocumentError,
    Locator,
    ShellBlock,
    classify,
    documented_blocks,
    parse,
)

ROOT = Path(__file__).parents[2]


def one(text: str) -> ShellBlock:
    [block] = parse(text, "doc.md")
    return block


def test_shell_blocks_are_found_with_their_line_and_language() -> None:
    blocks = parse("# Title\n\n```bash\nmake demo\n```\n\n```SH\nls \\\n  -l\n```\n", "doc.md")
    assert [(b.where, b.language, b.script) for b in blocks] == [
        ("doc.md:3", "bash", "make demo\n"), ("doc.md:7", "sh", "ls \\\n  -l\n")]


def test_other_languages_and_bare_fences_are_not_commands() -> None:
    text = ("```python\nimport os\n```\n```\n$ output sample\n```\n"
            "```dockerfile\nRUN pip install .\n```\n```json\n{}\n```\n")
    assert parse(text, "doc.md") == []


def test_a_fence_in_a_list_item_loses_its_indentation() -> None:
    block = one("1. Build:\n\n   ```sh\n   docker build .\n     --pull\n   ```\n")
    assert block.script == "docker build .\n  --pull\n"


def test_a_block_ends_only_at_a_fence_as_long_of_the_same_character() -> None:
    block = one("````sh\necho ```\n~~~\n```\necho end\n````\n")
    assert block.script == "echo ```\n~~~\n```\necho end\n"
    assert one("~~~bash\necho a\n~~~\n").script == "echo a\n"


def test_a_transcript_runs_its_commands_not_its_output() -> None:
    block = one("```console\n$ make install\nInstalling...\n$ ray job submit \\\n"
                ">     -- python -m showrunner run\nJob succeeded\n```\n")
    assert block.script == "make install\nray job submit \\\n    -- python -m showrunner run\n"


def test_a_marker_above_the_fence_says_why_a_block_is_not_run() -> None:
    block = one("<!-- not run in tests: needs a cloud account -->\n\n```sh\nray up c.yaml\n```\n")
    assert block.not_run == "needs a cloud account"
    assert one("```sh\nmake demo\n```\n").not_run is None


def test_a_marker_shown_inside_a_code_block_is_not_one() -> None:
    text = "```markdown\n<!-- not run in tests: an example -->\n```\n```sh\nmake demo\n```\n"
    assert one(text).not_run is None


@pytest.mark.parametrize(("text", "complaint"), [
    ("<!-- not run in tests: why -->\nSome prose.\n```sh\nls\n```\n", "just above the fence"),
    ("<!-- not run in tests: why -->\n```python\nprint()\n```\n", "just above the fence"),
    ("```sh\nls\n```\n<!-- not run in tests: why -->\n", "just above the fence"),
    ("<!-- not run in tests:   -->\n```sh\nls\n```\n", "no reason"),
    ("<!-- not run in tests: a reason\n   over two lines -->\n```sh\nls\n```\n", "one line"),
    ("```sh\nls\n", "never closed"),
])
def test_a_misplaced_or_malformed_marker_or_an_open_fence_is_an_error(text: str,
                                                                       complaint: str) -> None:
    with pytest.raises(DocumentError, match=complaint):
        parse(text, "doc.md")


def test_every_unmarked_block_must_be_run_and_every_locator_must_find_one() -> None:
    blocks = parse("```sh\nmake demo\n```\n```sh\nmake bench\n```\n"
                   "<!-- not run in tests: cloud -->\n```sh\nray up c.yaml\n```\n", "doc.md")
    run = {"demo": Locator("doc.md", "make demo"), "gone": Locator("doc.md", "make clean"),
           "marked": Locator("doc.md", "ray up")}
    found, problems = classify(blocks, run, {})
    assert found == {"demo": blocks[0]}
    assert len(problems) == 3
    assert "'make clean' (run as gone)" in problems[0] and "finds none" in problems[0]
    assert "'ray up' (run as marked)" in problems[1]  # a marked block is never run
    assert problems[2].startswith("doc.md:4: a shell block that no test runs")


def test_a_locator_that_finds_two_blocks_is_an_error() -> None:
    blocks = parse("```sh\nmake demo\n```\n```sh\nmake demo-fast\n```\n", "doc.md")
    found, problems = classify(blocks, {"demo": Locator("doc.md", "make demo")}, {})
    assert "finds doc.md:1, doc.md:4" in problems[0]


def test_a_block_awaiting_its_marker_is_let_through_until_it_has_one() -> None:
    locator = Locator("doc.md", "ray up")
    unmarked = parse("```sh\nray up c.yaml\n```\n", "doc.md")
    assert classify(unmarked, {}, {locator: "cloud"}) == ({}, [])
    marked = parse("<!-- not run in tests: cloud -->\n```sh\nray up c.yaml\n```\n", "doc.md")
    _, problems = classify(marked, {}, {locator: "cloud"})
    assert "(awaiting its marker)" in problems[0]


def test_this_repositorys_shell_blocks_are_each_run_or_marked_with_a_reason() -> None:
    blocks = documented_blocks(ROOT)
    found, problems = classify(blocks, RUN_IN_TESTS, AWAITING_MARKERS)
    assert problems == []
    assert set(found) == set(RUN_IN_TESTS)
    # The cluster recipe is the one that failed as written: it must keep the parts that make it
    # pass on a fresh machine beside another Ray.
    recipe = found["one-machine-cluster"].script
    for needed in ("source .venv/bin/activate", "export RAY_AUTH_MODE=token",
                   "ray get-auth-token --generate", "--dashboard-agent-listen-port 0",
                   "--block &", "kill %1"):
        assert needed in recipe, needed
    assert "ray stop" not in recipe  # it stops every Ray on the machine, not only this head
