"""Every SDK error maps to a typed error that pickles whole and says what to do."""

from __future__ import annotations

import errno
import inspect
import pickle

import httpx2
import openai
import pytest

from actors import sdk_errors
from actors.sdk_errors import from_openai, provider_errors
from pipelines.errors import (
    AuthFailed,
    BadRequest,
    DiskFull,
    EncoderCrashed,
    FlexBusy,
    MalformedResponse,
    MediaError,
    ModelNotFound,
    NodeFailed,
    ProviderActorLost,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    StageOutputError,
    StorageError,
    WorkerLost,
    WorkLost,
    storage_error,
)

REQUEST = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")


def _response(status: int, body: dict | None = None, **headers: str) -> httpx2.Response:
    return httpx2.Response(
        status, json=body or {}, headers={"x-request-id": "req_1", **headers}, request=REQUEST
    )


def _status_error(status: int, code: str | None = None, **headers: str) -> openai.APIStatusError:
    body = {"message": "boom", "type": "x", "code": code}
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    return client._make_status_error("boom", body=body, response=_response(status, **headers))


def _all_sdk_error_classes() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    stack: list[type[BaseException]] = [openai.OpenAIError]
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith("openai") and cls not in found:
            found.add(cls)
            stack.extend(cls.__subclasses__())
    exported = {
        obj for _, obj in inspect.getmembers(openai, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__.startswith("openai")
    }
    return found | exported


def test_every_sdk_error_class_has_an_explicit_mapping() -> None:
    unmapped = _all_sdk_error_classes() - set(sdk_errors.OPENAI_ERROR_MAP)
    assert not unmapped, f"map these openai errors in actors/sdk_errors.py: {unmapped}"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, None, BadRequest),
        (401, "invalid_api_key", AuthFailed),
        (403, None, AuthFailed),
        (404, "model_not_found", ModelNotFound),
        (404, None, ModelNotFound),  # (a wrong base URL's path, too: the message says both)
        (400, "model_not_found", ModelNotFound),  # servers differ in the status; the code rules
        (429, "resource_unavailable", FlexBusy),  # OpenAI's flex tier, out of room
        (498, "capacity_exceeded", FlexBusy),  # Groq's
        (408, None, ProviderUnavailable),
        (409, None, ProviderUnavailable),
        (422, None, BadRequest),
        (429, "rate_limit_exceeded", RateLimited),
        (429, "insufficient_quota", QuotaExhausted),
        (500, None, ProviderUnavailable),
        (503, None, ProviderUnavailable),
        (418, None, BadRequest),
    ],
)
def test_status_codes_map_to_kinds(status: int, code: str | None, expected: type) -> None:
    err = from_openai(_status_error(status, code), "llm", "http://127.0.0.1:9")
    assert type(err) is expected
    assert err.status == status and err.request_id == "req_1" and err.provider == "llm"
    assert err.retryable == (expected in (RateLimited, ProviderUnavailable, FlexBusy))


def test_messages_say_what_to_do() -> None:
    auth = from_openai(_status_error(401), "llm", "https://api.example.com")
    assert "SHOWRUNNER_LLM__API_KEY" in str(auth) and "HTTP 401" in str(auth)
    quota = from_openai(_status_error(429, "insufficient_quota"), "tts", "x")
    assert "credit" in str(quota) and "Retrying cannot help" in str(quota)
    missing = from_openai(_status_error(404), "image", "x")
    assert "SHOWRUNNER_IMAGE__MODEL" in str(missing) and "Retrying cannot help" in str(missing)
    retired = from_openai(_status_error(400, "model_not_found"), "video", "x")
    assert isinstance(retired, ModelNotFound) and "SHOWRUNNER_VIDEO__MODEL" in str(retired)


def test_retry_after_prefers_milliseconds() -> None:
    err = from_openai(_status_error(429, **{"retry-after-ms": "250", "retry-after": "1"}), "l", "")
    assert err.retry_after_s == pytest.approx(0.25)
    err = from_openai(_status_error(429, **{"retry-after": "3"}), "l", "")
    assert err.retry_after_s == pytest.approx(3.0)
    assert from_openai(_status_error(429), "l", "").retry_after_s is None


def test_connection_and_timeout_errors() -> None:
    refused = from_openai(openai.APIConnectionError(request=REQUEST), "llm", "x")
    assert isinstance(refused, ProviderUnavailable) and "SHOWRUNNER_LLM__BASE_URL" in str(refused)
    assert isinstance(from_openai(openai.APITimeoutError(REQUEST), "llm", "x"), ProviderTimeout)
    invalid = openai.APIResponseValidationError(_response(200), body="<html>")
    assert isinstance(from_openai(invalid, "llm", "x"), MalformedResponse)


@pytest.mark.parametrize(
    "err",
    [
        RateLimited("slow down", provider="llm", deployment="d", status=429, request_id="r",
                    retry_after_s=1.5),
        QuotaExhausted("no credit", provider="tts", status=429),
        ProviderTimeout("late", provider="video"),
        StageOutputError("the answer did not follow the schema twice"),
        MediaError("ffmpeg failed: no such file"),
        EncoderCrashed("ffmpeg was killed by SIGKILL"),
        DiskFull("No space left on device (/out/ep/episode.srt)"),
        ProviderActorLost("the tts provider actor's process died"),
        WorkerLost("compose_scene's worker died"),
    ],
)
def test_errors_pickle_with_their_fields(err: NodeFailed) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert back.__dict__ == err.__dict__
    assert str(back) == str(err)


def test_one_tree_holds_every_way_a_node_fails() -> None:
    for kind in (ProviderError, RateLimited, QuotaExhausted, StageOutputError, MediaError,
                 EncoderCrashed, StorageError, DiskFull, WorkLost, ProviderActorLost, WorkerLost):
        assert issubclass(kind, NodeFailed)


def test_only_lost_work_is_run_again() -> None:
    """A killed process lost the work; a refusal, a bad answer or a full disk would repeat."""
    rerun = {kind for kind in (ProviderError, RateLimited, StageOutputError, MediaError,
                               EncoderCrashed, StorageError, DiskFull, WorkLost,
                               ProviderActorLost, WorkerLost) if kind.rerun}
    assert rerun == {EncoderCrashed, WorkLost, ProviderActorLost, WorkerLost}


def test_a_files_error_is_classified_with_its_path() -> None:
    full = storage_error(OSError(errno.ENOSPC, "No space left on device", "/out/e/script.md"))
    assert type(full) is DiskFull and str(full) == "No space left on device (/out/e/script.md)"
    quota = storage_error(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert type(quota) is DiskFull
    denied = storage_error(PermissionError(errno.EACCES, "Permission denied", "/out/e"))
    assert type(denied) is StorageError and "/out/e" in str(denied)


def test_the_context_manager_chains_the_original_error() -> None:
    with pytest.raises(AuthFailed) as caught, provider_errors("llm", "http://h"):
        raise _status_error(401)
    assert isinstance(caught.value.__cause__, openai.AuthenticationError)
    assert caught.value.deployment == "http://h"
