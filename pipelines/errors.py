"""Everything that can fail one node of an episode's graph, as one tree.

    NodeFailed                    a node could not make its result; the episode's policy decides
    ├── ProviderError             a provider call failed: provider, deployment, status, request id
    │   ├── RetryableError        another attempt may succeed
    │   │   ├── RateLimited       429: wait out the shared pause, then retry
    │   │   ├── FlexBusy          the flex tier had no capacity (429 resource_unavailable, 498):
    │   │   │                     back off this call only, or send it at standard
    │   │   ├── ProviderTimeout   no answer within the request timeout
    │   │   ├── ProviderUnavailable  connection refused or reset, 408, 409, 5xx
    │   │   ├── MalformedResponse a 2xx whose body could not be read
    │   │   └── GenerationFailed  an asynchronous job (a clip) ended "failed"
    │   └── FatalError            retrying cannot help: fail fast and say what to do
    │       ├── QuotaExhausted    429 with code insufficient_quota: the account has no credit
    │       ├── AuthFailed        401, 403: the key is wrong or lacks access
    │       ├── BadRequest        400, 404, 422 and other 4xx: the request or model is wrong
    │       │   └── ModelNotFound 404 or code model_not_found: the model setting names none
    │       └── OutputRejected    the answer was cut off or filtered
    ├── StageOutputError          the model's answer did not validate, even after a corrective retry
    ├── MediaError                ffmpeg could not make a file, or a scene has nothing to compose
    │   └── EncoderCrashed        ffmpeg was killed (by a signal, the OOM killer): run it again
    ├── StorageError              a file of the episode could not be written or read
    │   └── DiskFull              no space left on the device (ENOSPC, EDQUOT)
    ├── BudgetExceeded            a call was not sent: it could pass a budget (it ends the episode)
    └── WorkLost                  the process doing a node's work died under it: run it again
        ├── ProviderActorLost     a provider actor's process died with the call in flight
        └── WorkerLost            a media task's worker process, or its node, died

A node whose error has ``rerun`` set is run again by the executor, a few times: its work is
idempotent and its inputs are kept. Anything else raised while a node runs is a bug of ours: it
fails that episode as an internal error, never the coordinator. Provider errors are raised by
the provider actors, where ``actors.sdk_errors`` maps the ``openai`` SDK's errors onto them at
one edge. Every class pickles with its fields, so an error raised in one process arrives whole
in another. Messages never contain an API key: a deployment is named by its host only.
"""

from __future__ import annotations

import errno
from typing import Any


class NodeFailed(Exception):
    """A node of an episode's graph could not make its result."""

    rerun = False  # True: the work itself was lost, not refused; running it again may succeed

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields are not in ``args``; carry them in the state so pickling keeps them.
        return (type(self), self.args[:1], self.__dict__)


class StageOutputError(NodeFailed):
    """The model's answer did not validate, even after one retry with the error in the prompt."""


class MediaError(NodeFailed):
    """ffmpeg could not make a file; the message carries the end of its error output."""


class EncoderCrashed(MediaError):
    """ffmpeg died of a signal, with nothing to say: its work, not its input, was lost."""

    rerun = True


class BudgetExceeded(NodeFailed):
    """A call was not sent: what it may cost could pass a budget. ``code`` names which:
    ``budget_exceeded`` (the episode's) or ``daily_budget_exceeded`` (its owner's, today)."""

    def __init__(self, message: str, *, code: str = "budget_exceeded") -> None:
        super().__init__(message)
        self.code = code


class StorageError(NodeFailed):
    """A file of the episode could not be written or read: the message names it and why."""


class DiskFull(StorageError):
    """No space is left where the episode's files go."""


class WorkLost(NodeFailed):
    """The process doing a node's work died under it (killed, out of memory, its node gone)."""

    rerun = True


class ProviderActorLost(WorkLost):
    """A provider actor's process died with the call in flight. The call may have been paid
    for; a new one is made, as after a timeout."""


class WorkerLost(WorkLost):
    """The worker process of a media task, or the node it ran on, died."""


FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error(err: OSError) -> StorageError:
    """An operating system's error about a file, as the node's failure."""
    where = f" ({err.filename})" if err.filename else ""
    kind = DiskFull if err.errno in FULL else StorageError
    return kind(f"{err.strerror or err}{where}")


class ProviderError(NodeFailed):
    """A provider call failed. ``provider`` names its kind (``llm``, ``tts``, ...)."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        deployment: str = "",
        status: int | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.deployment = deployment
        self.status = status
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f"{self.provider} provider" + (f" at {self.deployment}" if self.deployment else "")
        status = f" HTTP {self.status}" if self.status is not None else ""
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{where}:{status} {self.message}{request}"


class RetryableError(ProviderError):
    """Worth another attempt after a backoff."""

    retryable = True


class RateLimited(RetryableError):
    """429: every caller of the key pauses for ``retry_after_s``, then retries."""


class FlexBusy(RetryableError):
    """The flex tier had no capacity for the call (OpenAI: 429 ``resource_unavailable``; Groq:
    498 ``capacity_exceeded``). Not a rate limit: the key's other traffic goes on unpaused, and
    nothing was charged."""


class ProviderTimeout(RetryableError):
    """No answer within the request timeout."""


class ProviderUnavailable(RetryableError):
    """The server could not be reached, or answered 408, 409 or 5xx."""


class MalformedResponse(RetryableError):
    """A successful status whose body could not be parsed."""


class GenerationFailed(RetryableError):
    """An asynchronous generation job reported failure; a new job may succeed."""


class FatalError(ProviderError):
    """Retrying cannot help; the message says what to do instead."""


class QuotaExhausted(FatalError):
    """429 with ``insufficient_quota``: the account is out of credit."""


class AuthFailed(FatalError):
    """401 or 403: the API key is wrong, revoked, or lacks access to the model."""


class BadRequest(FatalError):
    """A 4xx other than 401, 403, 408, 409 and 429: the request itself is wrong."""


class ModelNotFound(BadRequest):
    """The provider serves no model of that name (404, or ``model_not_found`` with any status):
    the model setting is wrong or retired."""


class OutputRejected(FatalError):
    """The model's answer was cut off by the length limit or removed by a content filter."""
