"""One runner per kind of node: what it reads from the episode, the call it makes, and the result
it returns (which the executor stores under the node's id). Adding a kind adds a runner here.

Runners read their inputs from the episode's record, which holds every earlier node's result,
and never write to it; they add their calls' figures to the node's ``NodeRecord``. Files go where
the episode's ``EpisodeFolder`` says, in the run's storage; only keys travel between actors, never
a path (no two nodes of a cluster share one).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from actors.episode_calls import EpisodeCalls
from actors.media_tasks import MediaTasks
from pipelines.composition import Line
from pipelines.episode_folder import EpisodeFolder
from pipelines.episode_state import EpisodeRecord, MediaFile, NodeRecord, NodeResult
from pipelines.errors import MediaError
from pipelines.media_stages import clip_prompt, image_prompt, voice_for
from pipelines.models import SceneDialogue
from pipelines.planner import EpisodePlan, Node, NodeId, NodeKind, image_id
from pipelines.settings import ProviderKind
from pipelines.stages import StageCall, content_call, dialogue_call, outline_call


@dataclass(frozen=True)
class EpisodeContext:
    """What the runners of one episode work with."""

    record: EpisodeRecord
    plan: EpisodePlan
    folder: EpisodeFolder | None  # None when the episode stops at the script
    providers: Mapping[ProviderKind, EpisodeCalls]  # each call whose, cached, within budget
    tasks: MediaTasks

    def files(self) -> EpisodeFolder:
        if self.folder is None:
            raise RuntimeError("a media node ran without an episode folder")
        return self.folder

    def seed(self, nid: NodeId, attempt: int) -> int:
        """A seed per node and attempt, stable for a request's seed, so reruns repeat
        themselves."""
        request = self.record.request
        base = request.seed if request.seed is not None else self.record.id
        digest = hashlib.blake2b(f"{base}:{nid}:{attempt}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") & 0x7FFFFFFF


class NodeRunner(Protocol):
    async def run(self, ctx: EpisodeContext, node: Node, figures: NodeRecord) -> NodeResult: ...


# -- the script: one language-model call each ------------------------------------------------


class ScriptRunner:
    """A node the language model writes: one call whose answer must follow a schema; an invalid
    answer is asked for again once, with what was wrong."""

    def call(self, ctx: EpisodeContext, node: Node) -> StageCall[Any]:
        raise NotImplementedError

    async def run(self, ctx: EpisodeContext, node: Node, figures: NodeRecord) -> NodeResult:
        call = self.call(ctx, node)
        llm = ctx.providers[ProviderKind.LLM]
        for attempt in (1, 2):
            result = await llm.chat(call.messages, response_format=call.response_format,
                                    max_tokens=call.max_tokens, seed=ctx.seed(node.id, attempt))
            figures.account(result)
            try:
                return call.parse(result.text)
            except ValidationError as err:
                if attempt == 2:
                    raise call.gave_up(err) from err
                call = call.with_correction(result.text, err)
        raise AssertionError("unreachable")


class OutlineRunner(ScriptRunner):
    """A chunk of the outline, seeing the chunks before it."""

    def call(self, ctx: EpisodeContext, node: Node) -> StageCall[Any]:
        return outline_call(ctx.record.request, ctx.plan.chunk_scenes(node.id.index),
                            ctx.record.outline_drafts())


class ContentRunner(ScriptRunner):
    """A scene's setting, action and mood, from the outline up to it."""

    def call(self, ctx: EpisodeContext, node: Node) -> StageCall[Any]:
        return content_call(ctx.record.request, ctx.record.scene_outlines(), node.id.index)


class DialogueRunner(ScriptRunner):
    """A scene's lines, seeing the earlier scenes' lines its continuity allows."""

    def call(self, ctx: EpisodeContext, node: Node) -> StageCall[Any]:
        record, scene = ctx.record, node.id.index
        content = record.content(scene)
        assert content is not None  # an input of this node
        earlier: dict[int, SceneDialogue] = {}
        for seen in ctx.plan.continuity.sees(scene):
            dialogue = record.dialogue(seen)
            if dialogue is not None:  # a skipped scene is seen as missing
                earlier[seen] = dialogue
        return dialogue_call(record.request, record.scene_outlines()[scene - 1], content,
                             earlier)


# -- media: provider calls that write files --------------------------------------------------


class SpeechRunner:
    """One line of dialogue, spoken in its character's voice."""

    async def run(self, ctx: EpisodeContext, node: Node, figures: NodeRecord) -> NodeResult:
        scene, number = node.id.index, node.id.line
        dialogue = ctx.record.dialogue(scene)
        assert dialogue is not None  # an input of this node
        line = dialogue.lines[number - 1]
        result = await ctx.providers[ProviderKind.TTS].speech(
            line.text, voice=voice_for(ctx.record.request, line.speaker),
            out=ctx.files().speech(scene, number))
        figures.account(result)
        return MediaFile(size_bytes=result.size_bytes)


class ImageRunner:
    """A scene's picture, from its outline and content."""

    async def run(self, ctx: EpisodeContext, node: Node, figures: NodeRecord) -> NodeResult:
        scene = node.id.index
        content = ctx.record.content(scene)
        assert content is not None  # an input of this node
        prompt = image_prompt(ctx.record.request, ctx.record.scene_outlines()[scene - 1], content)
        result = await ctx.providers[ProviderKind.IMAGE].image(
            prompt, out=ctx.files().image(scene))
        figures.account(result)
        return MediaFile(size_bytes=result.size_bytes)


class ClipRunner:
    """A scene's clip: a provider's job from its picture, or, with no video provider, a slow pan
    across the picture made here."""

    async def run(self, ctx: EpisodeContext, node: Node, figures: NodeRecord) -> NodeResult:
        scene, folder = node.id.index, ctx.files()
        video = ctx.providers.get(ProviderKind.VIDEO)
        if video is None:
            started = time.monotonic()
            work = await ctx.tasks.pan(folder.image(scene), folder.clip(scene))
            figures.latency_s += time.monotonic() - started
            return MediaFile(cpu_s=work.cpu_s, run_s=work.run_s)
        content = ctx.record.content(scene)
        assert content is not None  # an input of this node, through the picture
        result = await video.clip(
            clip_prompt(ctx.record.scene_outlines()[scene - 1], content),
            image=folder.image(scene), out=folder.clip(scene))
        figures.account(result)
        return MediaFile(size_bytes=result.size_bytes)


# -- CPU work: Ray tasks -----------------------------------------------------------------------


class ComposeRunner:
    """A scene's lines laid over its clip, with subtitles."""

    async def run(self, ctx: EpisodeContext, node: Node, figures: NodeRecord) -> NodeResult:
        scene, folder = node.id.index, ctx.files()
        dialogue = ctx.record.dialogue(scene)
        assert dialogue is not None  # an input of this node, through its speech
        lines = [Line(line.speaker, line.text, folder.speech(scene, number))
                 for number, line in enumerate(dialogue.lines, start=1)]
        started = time.monotonic()
        composed = await ctx.tasks.compose(lines, folder.clip(scene), folder.scene_video(scene))
        figures.latency_s += time.monotonic() - started
        return composed


class StitchRunner:
    """Every composed scene, in order, as one episode; the first picture as its poster."""

    async def run(self, ctx: EpisodeContext, node: Node, figures: NodeRecord) -> NodeResult:
        scenes = ctx.record.composed_scenes()
        if not scenes:
            raise MediaError("no scene could be composed, so there is no episode")
        pictures: Sequence[int] = [s for s in range(1, ctx.plan.scenes + 1)
                                   if image_id(s) in ctx.record.results]
        started = time.monotonic()
        stitched = await ctx.tasks.stitch(ctx.files(), scenes, min(pictures, default=None))
        figures.latency_s += time.monotonic() - started
        return stitched


RUNNERS: Mapping[NodeKind, NodeRunner] = {
    NodeKind.OUTLINE: OutlineRunner(),
    NodeKind.CONTENT: ContentRunner(),
    NodeKind.DIALOGUE: DialogueRunner(),
    NodeKind.SPEECH: SpeechRunner(),
    NodeKind.IMAGE: ImageRunner(),
    NodeKind.CLIP: ClipRunner(),
    NodeKind.COMPOSE: ComposeRunner(),
    NodeKind.STITCH: StitchRunner(),
}
