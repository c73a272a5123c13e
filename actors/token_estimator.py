"""Estimates of a chat call's tokens, made before it is sent, for the limiter's token bucket."""

from __future__ import annotations

import math
from typing import Any

from actors.call_results import Usage


class TokenEstimator:
    """Estimates a chat call's tokens before it is sent, and learns from what usage reports.

    It starts conservative — about three characters a prompt token, plus the whole ``max_tokens``
    — so the first calls cannot burst past a token limit. Then it moves toward the provider's
    own counts (a running average, with a 25% margin, never above the conservative figure): the
    cap on output is usually far above what a model writes, and charging it in full would leave
    most of a token limit unused. A provider that charges ``max_tokens`` up front (as OpenAI
    does) shows it in ``x-ratelimit-remaining-tokens``, which tightens the limiter regardless.
    """

    MARGIN = 1.25
    WEIGHT = 0.1  # of each new observation in the running average

    def __init__(self) -> None:
        self.prompt_ratio = 1.0  # real prompt tokens / (characters / 3)
        self.output_ratio = 1.0  # real completion tokens / max_tokens

    @staticmethod
    def _rough_prompt(messages: list[dict[str, Any]]) -> float:
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        return chars / 3 + 4 * len(messages)

    def estimate(self, messages: list[dict[str, Any]], max_output: int) -> int:
        prompt = self._rough_prompt(messages) * min(1.0, self.prompt_ratio * self.MARGIN)
        output = max_output * min(1.0, self.output_ratio * self.MARGIN)
        return math.ceil(prompt + output)

    def learn(self, messages: list[dict[str, Any]], max_output: int, usage: Usage) -> None:
        rough = self._rough_prompt(messages)
        if rough > 0 and usage.tokens_in > 0:
            self.prompt_ratio += self.WEIGHT * (usage.tokens_in / rough - self.prompt_ratio)
        if max_output > 0 and usage.tokens_out > 0:
            self.output_ratio += self.WEIGHT * (usage.tokens_out / max_output - self.output_ratio)
