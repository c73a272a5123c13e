"""Which faults of object storage are waited out and which are said at once, told apart without
a store (the waiting itself, against a real S3 server whose line is cut, is in
``tests/integration/test_object_storage.py``)."""

from __future__ import annotations

import errno

import aiohttp
import botocore.exceptions as boto
import pytest

from pipelines.storage import PASSING, Storage

URL = "s3://bucket/episodes"


def tried(err: BaseException, patience_s: float = 0.3) -> tuple[OSError, int]:
    """The error a storage operation failing with ``err`` every time ends in, and its tries."""
    storage = Storage(URL, patience_s=patience_s)
    tries = 0

    def action() -> None:
        nonlocal tries
        tries += 1
        raise err

    with pytest.raises(OSError) as caught:
        storage._object("ep/a.wav", action)
    return caught.value, tries


@pytest.mark.parametrize("err", [
    boto.EndpointConnectionError(endpoint_url="http://s3"),
    boto.ConnectTimeoutError(endpoint_url="http://s3"),
    boto.ReadTimeoutError(endpoint_url="http://s3"),
    boto.ConnectionClosedError(endpoint_url="http://s3"),
    aiohttp.ServerDisconnectedError(),
    OSError(errno.EREMOTEIO, "InternalError"),  # s3fs's 500
    OSError(errno.EBUSY, "SlowDown"),  # s3fs's 503
    ConnectionResetError(errno.ECONNRESET, "reset"),
    TimeoutError(),
], ids=type)
def test_a_fault_that_may_pass_is_tried_again_until_the_patience_ends(err: Exception) -> None:
    failed, tries = tried(err)
    assert tries > 1 and failed.errno in PASSING
    assert failed.filename == f"{URL}/ep/a.wav"
    assert "still failing after 0.3 s of trying" in str(failed)


@pytest.mark.parametrize("err", [
    FileNotFoundError("NoSuchBucket"),
    PermissionError("AccessDenied"),
    boto.NoCredentialsError(),
    boto.ParamValidationError(report="bad"),
    TypeError("an option the client does not take"),
    OSError(errno.EINVAL, "InvalidArgument"),
], ids=type)
def test_an_answer_that_will_not_change_is_said_at_once_naming_the_object(err: Exception) -> None:
    failed, tries = tried(err, patience_s=30)
    assert tries == 1 and failed.errno not in PASSING
    assert failed.filename == f"{URL}/ep/a.wav"
    assert isinstance(failed, FileNotFoundError) == isinstance(err, FileNotFoundError)
    assert isinstance(failed, PermissionError) == isinstance(err, PermissionError)


def test_no_patience_is_one_try() -> None:
    _, tries = tried(ConnectionResetError(errno.ECONNRESET, "reset"), patience_s=0)
    assert tries == 1


def test_the_patience_travels_with_the_storage() -> None:
    import pickle

    again = pickle.loads(pickle.dumps(Storage(URL, {"key": "k"}, patience_s=7.5)))
    assert (again.url, again.options, again.patience_s) == (URL, {"key": "k"}, 7.5)
