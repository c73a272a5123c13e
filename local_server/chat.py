"""``POST /v1/chat/completions``: the body checked as OpenAI checks it, the answer made at once.

The answer is written before admission because its length is the token charge (prompt plus
completion tokens, as OpenAI counts them); it is cheap, and the latency is slept afterwards. The
request's ``service_tier`` (``local_server.tiers``) sets how it is served and billed.
"""

from __future__ import annotations

import time
from typing import Any

from local_server.config import ServerConfig
from local_server.endpoint import Admission, Call
from local_server.errors import ApiError, bad_request
from local_server.textgen import SchemaError, answer
from local_server.tiers import tier_of

FORMATS = ("text", "json_object", "json_schema")


def check_chat_body(raw: Any) -> dict[str, Any]:
    """The body if it is a chat request this server can answer; a 400 otherwise."""
    if not isinstance(raw, dict):
        raise bad_request("The request body must be a JSON object.")
    if not isinstance(raw.get("model"), str) or not raw["model"]:
        raise bad_request("you must provide a model parameter", param="model")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"'messages[{i}]' must be an object with a string 'role'.",
                              param=f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"'messages[{i}].content' must be a string or an array of parts.",
                              param=f"messages[{i}].content")
    if raw.get("stream"):
        raise bad_request("streaming is not supported by the local server", param="stream")
    if raw.get("n") not in (None, 1):
        raise bad_request("the local server makes one choice per request: 'n' must be 1",
                          param="n")
    if raw.get("tools"):
        raise bad_request("tools are not supported by the local server", param="tools")
    for name in ("max_tokens", "max_completion_tokens", "seed"):
        value = raw.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or (value < 1 and name != "seed")):
            raise bad_request(f"'{name}' must be {'an' if name == 'seed' else 'a positive'} "
                              "integer.", param=name)
    _check_format(raw.get("response_format"))
    return raw


def _check_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in FORMATS:
        raise bad_request(f"'response_format.type' must be one of {', '.join(FORMATS)}.",
                          param="response_format")
    if fmt["type"] != "json_schema":
        return
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise bad_request("Missing required parameter: 'response_format.json_schema'.",
                          param="response_format.json_schema", code="missing_required_parameter")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise bad_request("Missing required parameter: 'response_format.json_schema.name'.",
                          param="response_format.json_schema.name",
                          code="missing_required_parameter")
    if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
        raise bad_request("'response_format.json_schema.schema' must be an object.",
                          param="response_format.json_schema.schema")


def chat_admission(raw: Any, call: Call, config: ServerConfig) -> Admission:
    """The checked request's token charge, tier and ready completion."""
    body = check_chat_body(raw)
    tier = tier_of(body, config.flex_models)
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    fmt = body.get("response_format")
    try:
        made = answer(body["messages"], fmt, cap, config.seed, request_seed=body.get("seed"))
    except SchemaError as err:
        name = fmt["json_schema"]["name"]
        raise ApiError(400, f"Invalid schema for response_format '{name}': {err}",
                       param="response_format", code="invalid_json_schema",
                       counter="bad_request") from None
    completion = {
        "id": f"chatcmpl-{call.id[4:]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": made.text, "refusal": None},
            "finish_reason": made.finish_reason,
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": made.prompt_tokens,
            "completion_tokens": made.completion_tokens,
            "total_tokens": made.total_tokens,
        },
        "service_tier": str(tier),
        "system_fingerprint": "fp_local",
    }
    return Admission(tokens=made.total_tokens, body=completion, tier=tier)
