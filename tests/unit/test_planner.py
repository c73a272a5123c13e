"""The episode graph: edges per continuity mode, ranks, critical path, and prompt hygiene."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.models import (
    Continuity,
    EpisodeRequest,
    OutlineDraft,
    SceneContent,
    SceneDialogue,
    SceneOutline,
)
from pipelines.planner import OUTLINE_CHUNK, NodeKind, plan_episode
from pipelines.stages import content_call, dialogue_call, outline_call


def dialogue_deps(plan, scene: int) -> set[str]:
    return set(plan.nodes[f"dialogue:{scene}"].deps)


def test_chain_links_each_dialogue_to_the_previous_one_only() -> None:
    plan = plan_episode(4, Continuity.parse("chain"))
    assert dialogue_deps(plan, 1) == {"content:1"}
    assert dialogue_deps(plan, 3) == {"content:3", "dialogue:2"}
    assert set(plan.nodes["content:4"].deps) == {"outline:1"}


def test_window_batch_and_none() -> None:
    window = plan_episode(6, Continuity.parse("window:2"))
    assert dialogue_deps(window, 5) == {"content:5", "dialogue:3", "dialogue:4"}
    batch = plan_episode(7, Continuity.parse("batch:3"))
    assert dialogue_deps(batch, 2) == {"content:2"}  # first batch sees nothing
    assert dialogue_deps(batch, 4) == {"content:4", "dialogue:1", "dialogue:2", "dialogue:3"}
    assert dialogue_deps(batch, 7) == {"content:7", *{f"dialogue:{i}" for i in range(1, 7)}}
    free = plan_episode(5, Continuity.parse("none"))
    assert all(dialogue_deps(free, s) == {f"content:{s}"} for s in range(1, 6))


def test_long_episodes_are_outlined_in_chained_chunks() -> None:
    plan = plan_episode(45, Continuity.parse("chain"))
    outlines = [n for n in plan.nodes.values() if n.kind is NodeKind.OUTLINE]
    assert [n.id for n in outlines] == ["outline:1", "outline:2", "outline:3"]
    assert plan.nodes["outline:3"].deps == ("outline:2",)
    # Content of an early scene does not wait for later chunks.
    assert plan.nodes["content:5"].deps == ("outline:1",)
    assert plan.nodes[f"content:{OUTLINE_CHUNK + 1}"].deps == ("outline:2",)
    assert list(plan.chunk_scenes(3)) == list(range(2 * OUTLINE_CHUNK + 1, 46))


def test_ready_starts_nodes_the_moment_inputs_exist_most_urgent_first() -> None:
    plan = plan_episode(3, Continuity.parse("chain"))
    assert [n.id for n in plan.ready(done=[], started=[])] == ["outline:1"]
    after_outline = plan.ready(done=["outline:1"], started=[])
    assert [n.id for n in after_outline] == ["content:1", "content:2", "content:3"]
    # dialogue:1 is on the longest remaining path, so it outranks content:3.
    ready = plan.ready(done=["outline:1", "content:1", "content:2"], started=[])
    assert [n.id for n in ready] == ["dialogue:1", "content:3"]
    assert plan.ready(done=["outline:1"], started=["content:1", "content:2", "content:3"]) == []


def test_critical_path_and_downstream() -> None:
    plan = plan_episode(3, Continuity.parse("chain"))
    durations = {nid: 1.0 for nid in plan.nodes}
    # outline, content:1, then three dialogues in a chain.
    assert plan.critical_path(durations) == pytest.approx(5.0)
    free = plan_episode(3, Continuity.parse("none"))
    assert free.critical_path(durations) == pytest.approx(3.0)
    assert plan.downstream(["dialogue:2"]) == {"dialogue:3"}
    assert plan.downstream(["outline:1"]) == set(plan.nodes) - {"outline:1"}


@given(scenes=st.integers(1, 120), mode=st.sampled_from(
    ["chain", "none", "window:1", "window:3", "batch:1", "batch:4", "batch:10"]))
def test_graph_is_acyclic_and_never_looks_forward(scenes: int, mode: str) -> None:
    plan = plan_episode(scenes, Continuity.parse(mode))
    assert len(plan.nodes) == plan.chunk_of(scenes) + 2 * scenes
    position = {nid: i for i, nid in enumerate(plan.nodes)}
    for node in plan.nodes.values():
        for dep in node.deps:
            assert position[dep] < position[node.id]  # topological order
            dep_node = plan.nodes[dep]
            if node.kind is NodeKind.DIALOGUE and dep_node.kind is NodeKind.DIALOGUE:
                assert dep_node.index < node.index


@pytest.mark.parametrize("text", ["sequel", "window:0", "batch:", "window:201", "chain:2", ""])
def test_unknown_continuity_modes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="continuity"):
        Continuity.parse(text)


def _scene(n: int) -> SceneOutline:
    return SceneOutline(number=n, title=f"TITLE-{n}", setting=f"SETTING-{n}",
                        summary=f"SUMMARY-{n}", characters=["Ada", "Ben"])


def _dialogue(n: int) -> SceneDialogue:
    return SceneDialogue.model_validate(
        {"lines": [{"speaker": "Ada", "text": f"SPEECH-{n}", "direction": ""}]}
    )


@given(scene=st.integers(1, 12), mode=st.sampled_from(["chain", "window:3", "batch:4", "none"]))
def test_no_prompt_holds_a_later_scenes_text(scene: int, mode: str) -> None:
    request = EpisodeRequest(premise="A heist at a bakery.", scenes=12, continuity=mode)
    outline = [_scene(n) for n in range(1, 13)]
    content = SceneContent(setting=f"SETTING-{scene}", action=f"ACTION-{scene}", mood="tense")
    plan = plan_episode(12, request.continuity_mode)
    seen = {n: _dialogue(n) for n in request.continuity_mode.sees(scene)}
    assert {f"dialogue:{n}" for n in seen} <= set(plan.nodes[f"dialogue:{scene}"].deps)
    prompts = [
        content_call(request, outline, scene).messages,
        dialogue_call(request, outline[scene - 1], content, seen).messages,
    ]
    text = "\n".join(m["content"] for messages in prompts for m in messages)
    for later in range(scene + 1, 13):
        for marker in ("TITLE", "SUMMARY", "SPEECH", "ACTION", "SETTING"):
            assert f"{marker}-{later}" not in text
    for earlier in seen:
        assert f"SPEECH-{earlier}" in text


def test_a_later_outline_chunk_sees_the_earlier_chunks() -> None:
    request = EpisodeRequest(premise="Space pirates.", scenes=25)
    first = OutlineDraft(title="Pilot", logline="They fly.",
                         characters=[{"name": "Ada", "description": "captain"}],
                         scenes=[_scene(n) for n in range(1, 21)])
    call = outline_call(request, range(21, 26), [first])
    text = call.messages[-1]["content"]
    assert "SUMMARY-20" in text and "scenes 21 to 25" in text
    assert call.response_format["type"] == "json_schema"


def test_earliest_finish_and_what_each_node_leaves_to_do() -> None:
    plan = plan_episode(2, Continuity.parse("chain"), lines=1)
    durations = {nid: 1.0 for nid in plan.nodes}
    durations["compose:2"] = 5.0
    finish = plan.earliest_finish(durations)
    assert finish["outline:1"] == 1.0 and finish["image:1"] == 3.0  # outline, content, image
    assert finish["stitch:0"] == pytest.approx(plan.critical_path(durations))
    after = plan.longest_after(durations)
    assert after["clip:2"] == 6.0 and after["clip:1"] == 2.0  # its composition, the stitch
    assert after["stitch:0"] == 0.0
    assert after["outline:1"] == pytest.approx(plan.critical_path(durations) - 1.0)
