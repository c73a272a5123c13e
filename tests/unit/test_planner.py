"""The episode graph: edges per continuity mode, start order, critical path, prompt hygiene."""

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
from pipelines.planner import (
    OUTLINE_CHUNK,
    STITCH_ID,
    NodeId,
    NodeKind,
    clip_id,
    compose_id,
    content_id,
    dialogue_id,
    image_id,
    outline_id,
    plan_episode,
)
from pipelines.stages import content_call, dialogue_call, outline_call


def dialogue_deps(plan, scene: int) -> set[NodeId]:
    return set(plan.nodes[dialogue_id(scene)].deps)


def test_chain_links_each_dialogue_to_the_previous_one_only() -> None:
    plan = plan_episode(4, Continuity.parse("chain"))
    assert dialogue_deps(plan, 1) == {content_id(1)}
    assert dialogue_deps(plan, 3) == {content_id(3), dialogue_id(2)}
    assert set(plan.nodes[content_id(4)].deps) == {outline_id(1)}


def test_window_batch_and_none() -> None:
    window = plan_episode(6, Continuity.parse("window:2"))
    assert dialogue_deps(window, 5) == {content_id(5), dialogue_id(3), dialogue_id(4)}
    batch = plan_episode(7, Continuity.parse("batch:3"))
    assert dialogue_deps(batch, 2) == {content_id(2)}  # first batch sees nothing
    assert dialogue_deps(batch, 4) == {content_id(4), *map(dialogue_id, (1, 2, 3))}
    assert dialogue_deps(batch, 7) == {content_id(7), *map(dialogue_id, range(1, 7))}
    free = plan_episode(5, Continuity.parse("none"))
    assert all(dialogue_deps(free, s) == {content_id(s)} for s in range(1, 6))


def test_long_episodes_are_outlined_in_chained_chunks() -> None:
    plan = plan_episode(45, Continuity.parse("chain"))
    outlines = [n for n in plan.nodes.values() if n.kind is NodeKind.OUTLINE]
    assert [n.id for n in outlines] == [outline_id(1), outline_id(2), outline_id(3)]
    assert plan.nodes[outline_id(3)].deps == (outline_id(2),)
    # Content of an early scene does not wait for later chunks.
    assert plan.nodes[content_id(5)].deps == (outline_id(1),)
    assert plan.nodes[content_id(OUTLINE_CHUNK + 1)].deps == (outline_id(2),)
    assert list(plan.chunk_scenes(3)) == list(range(2 * OUTLINE_CHUNK + 1, 46))


def test_the_longest_remaining_path_starts_first_then_the_earliest_scene() -> None:
    plan = plan_episode(3, Continuity.parse("chain"))
    order = sorted(plan.nodes, key=plan.start_order.__getitem__)
    # dialogue:1 is on the longest remaining path, so it outranks content:2 and content:3.
    assert order[:4] == [outline_id(1), content_id(1), dialogue_id(1), content_id(2)]


def test_node_ids_are_typed_and_read_back_from_their_text() -> None:
    speech = NodeId(NodeKind.SPEECH, 3, 2)
    assert str(speech) == "speech:3.2" and NodeId.parse("speech:3.2") == speech
    assert speech.scene == 3 and outline_id(1).scene is None and STITCH_ID.scene is None
    for text in ("speech", "scene:1", "content:x", "content:1.y"):
        with pytest.raises(ValueError, match="not a node id"):
            NodeId.parse(text)


def test_critical_path_and_downstream() -> None:
    plan = plan_episode(3, Continuity.parse("chain"))
    durations = {nid: 1.0 for nid in plan.nodes}
    # outline, content:1, then three dialogues in a chain.
    assert plan.critical_path(durations) == pytest.approx(5.0)
    free = plan_episode(3, Continuity.parse("none"))
    assert free.critical_path(durations) == pytest.approx(3.0)
    assert plan.downstream([dialogue_id(2)]) == {dialogue_id(3)}
    assert plan.downstream([outline_id(1)]) == set(plan.nodes) - {outline_id(1)}


@given(scenes=st.integers(1, 120), mode=st.sampled_from(
    ["chain", "none", "window:1", "window:3", "batch:1", "batch:4", "batch:10"]))
def test_graph_is_acyclic_and_never_looks_forward(scenes: int, mode: str) -> None:
    plan = plan_episode(scenes, Continuity.parse(mode))
    assert len(plan.nodes) == plan.chunk_of(scenes) + 2 * scenes
    position = {nid: i for i, nid in enumerate(plan.nodes)}
    for node in plan.nodes.values():
        for dep in node.deps:
            assert position[dep] < position[node.id]  # topological order
            if node.kind is NodeKind.DIALOGUE and dep.kind is NodeKind.DIALOGUE:
                assert dep.index < node.id.index


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
    assert {dialogue_id(n) for n in seen} <= set(plan.nodes[dialogue_id(scene)].deps)
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
    durations[compose_id(2)] = 5.0
    finish = plan.earliest_finish(durations)
    assert finish[outline_id(1)] == 1.0 and finish[image_id(1)] == 3.0  # outline, content, image
    assert finish[STITCH_ID] == pytest.approx(plan.critical_path(durations))
    after = plan.longest_after(durations)
    assert after[clip_id(2)] == 6.0 and after[clip_id(1)] == 2.0  # its composition, the stitch
    assert after[STITCH_ID] == 0.0
    assert after[outline_id(1)] == pytest.approx(plan.critical_path(durations) - 1.0)
