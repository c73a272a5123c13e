"""The one edge where the ``openai`` SDK's errors become the typed provider errors of
``pipelines.errors`` (the tree is drawn there): ``provider_errors()`` wraps every SDK call, and
``OPENAI_ERROR_MAP`` gives each SDK exception class a decision of its own (a test walks them all).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import openai

from pipelines.errors import (
    AuthFailed,
    BadRequest,
    FlexBusy,
    MalformedResponse,
    ModelNotFound,
    OutputRejected,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)

# What a flex tier answers when it has no room: OpenAI's 429 code, Groq's 498 code.
FLEX_BUSY_CODES = frozenset({"resource_unavailable", "capacity_exceeded"})


def _env(provider: str, field: str) -> str:
    return f"SHOWRUNNER_{provider.upper()}__{field}"


def _status_error(err: openai.APIStatusError, provider: str, deployment: str) -> ProviderError:
    status = err.status_code
    code = getattr(err, "code", None)
    fields: dict[str, Any] = {
        "provider": provider,
        "deployment": deployment,
        "status": status,
        "request_id": err.request_id,
    }
    detail = _server_message(err)
    if status == 429 and code == "insufficient_quota":
        return QuotaExhausted(
            f"quota exhausted ({detail}): the account has no credit left; add credit or use "
            f"another key ({_env(provider, 'API_KEY')}). Retrying cannot help.",
            **fields,
        )
    if code in FLEX_BUSY_CODES or status == 498:
        # Nothing was charged and the key's limits were not hit: back off this call only.
        return FlexBusy(f"the flex tier has no capacity now ({detail})", **fields)
    if code == "model_not_found" or status == 404:
        return ModelNotFound(
            f"model not found ({detail}): set {_env(provider, 'MODEL')} to a model this "
            f"provider serves (docs/providers.md lists today's), or check "
            f"{_env(provider, 'BASE_URL')}. Retrying cannot help.",
            **fields,
        )
    if status == 429:
        return RateLimited(f"rate limited ({detail})", retry_after_s=retry_after_s(err), **fields)
    if status in (401, 403):
        return AuthFailed(
            f"authentication failed ({detail}): check {_env(provider, 'API_KEY')}.", **fields
        )
    if status in (408, 409) or status >= 500:
        return ProviderUnavailable(f"server error ({detail})", **fields)
    return BadRequest(f"request rejected ({detail})", **fields)


def _server_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:300]
    return (err.message or "no message")[:300]


def retry_after_s(err: openai.APIStatusError) -> float | None:
    """The server's requested pause: ``retry-after-ms``, else ``retry-after`` in seconds."""
    headers = err.response.headers
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue  # an HTTP-date form; rare for model APIs, so fall back to our backoff
        if seconds >= 0 and seconds == seconds:  # not NaN
            return seconds
    return None


def from_openai(err: openai.OpenAIError, provider: str, deployment: str) -> ProviderError:
    """Map one SDK error to its typed counterpart (the table below must cover every class)."""
    for cls in type(err).__mro__:
        mapper = OPENAI_ERROR_MAP.get(cls)
        if mapper is not None:
            return mapper(err, provider, deployment)
    return ProviderError(f"unexpected SDK error: {err}", provider=provider, deployment=deployment)


def _simple(cls: type[ProviderError], text: str) -> Any:
    def mapper(err: openai.OpenAIError, provider: str, deployment: str) -> ProviderError:
        return cls(f"{text}: {err}"[:400], provider=provider, deployment=deployment)

    return mapper


def _validation(err: Any, provider: str, deployment: str) -> ProviderError:
    return MalformedResponse(
        "the response body could not be parsed",
        provider=provider,
        deployment=deployment,
        status=err.status_code,
        request_id=err.response.headers.get("x-request-id"),
    )


def _socket_error(err: BaseException) -> OSError | None:
    """The OS-level error under an SDK error, if any: transports differ in how they wrap it."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, TimeoutError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _connection(err: Any, provider: str, deployment: str) -> ProviderError:
    return ProviderUnavailable(
        f"cannot reach the server ({_socket_error(err) or err.__cause__ or err.message}): is "
        f"{_env(provider, 'BASE_URL')} right and the server running?",
        provider=provider,
        deployment=deployment,
    )


def _timeout(err: Any, provider: str, deployment: str) -> ProviderError:
    # The aiohttp transport reports a refused connection as a connect *timeout*: look beneath.
    if _socket_error(err) is not None:
        return _connection(err, provider, deployment)
    return ProviderTimeout("no answer within the timeout", provider=provider,
                           deployment=deployment)


# Exact classes, so the test can prove every SDK error class has a decision of its own.
OPENAI_ERROR_MAP: dict[type[BaseException], Any] = {
    openai.OpenAIError: _simple(ProviderError, "SDK error"),
    openai.APIError: _simple(ProviderError, "API error"),
    openai.APIStatusError: _status_error,
    openai.BadRequestError: _status_error,
    openai.AuthenticationError: _status_error,
    openai.OAuthError: _status_error,
    openai.PermissionDeniedError: _status_error,
    openai.NotFoundError: _status_error,
    openai.ConflictError: _status_error,
    openai.UnprocessableEntityError: _status_error,
    openai.RateLimitError: _status_error,
    openai.InternalServerError: _status_error,
    openai.APIConnectionError: _connection,
    openai.APITimeoutError: _timeout,
    openai.APIResponseValidationError: _validation,
    openai.LengthFinishReasonError: _simple(OutputRejected, "answer cut off at the length limit"),
    openai.ContentFilterFinishReasonError: _simple(OutputRejected, "answer removed by a filter"),
    openai.InvalidWebhookSignatureError: _simple(BadRequest, "invalid webhook signature"),
    openai.WebSocketConnectionClosedError: _simple(ProviderUnavailable, "connection closed"),
    openai.WebSocketQueueFullError: _simple(ProviderUnavailable, "send queue full"),
}
OPENAI_ERROR_MAP[openai._exceptions.SubjectTokenProviderError] = _simple(
    AuthFailed, "could not obtain a token"
)
# Raised when the SDK itself is misused: a bug of ours, never worth a retry.
for _misuse in (
    openai._AmbiguousModuleClientUsageError,
    openai.lib.azure.MutuallyExclusiveAuthError,
    openai._response.StreamAlreadyConsumed,
    openai.lib._old_api.APIRemovedInV1,
):
    OPENAI_ERROR_MAP[_misuse] = _simple(BadRequest, "SDK misuse")


@contextlib.contextmanager
def provider_errors(provider: str, deployment: str) -> Iterator[None]:
    """Turn any SDK error raised inside into its ``ProviderError``, chained to the original."""
    try:
        yield
    except ProviderError as err:  # raised by our own parsing: say where it came from
        err.provider = err.provider or provider
        err.deployment = err.deployment or deployment
        raise
    except openai.OpenAIError as err:
        raise from_openai(err, provider, deployment) from err
    except openai.InvalidWebhookSignatureError as err:  # a ValueError, not an OpenAIError
        raise from_openai(err, provider, deployment) from err
