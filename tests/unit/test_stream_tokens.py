"""Episode-scoped stream tokens: issued for one tenant and episode, refused when altered,
expired, for another episode or from another secret."""

from __future__ import annotations

import pytest

from pipelines.stream_tokens import StreamTokens, TokenRefused

TOKENS = StreamTokens(secret=b"s" * 32, ttl_s=600)


def test_a_token_admits_its_tenant_to_its_episode_until_it_expires() -> None:
    token = TOKENS.issue("t_abc", "ep-1", now=1000.0)
    assert TOKENS.tenant(token, "ep-1", now=1000.0) == "t_abc"
    assert TOKENS.tenant(token, "ep-1", now=1599.0) == "t_abc"
    with pytest.raises(TokenRefused, match="expired"):
        TOKENS.tenant(token, "ep-1", now=1600.0)


def test_a_token_is_for_one_episode() -> None:
    token = TOKENS.issue("t_abc", "ep-1", now=1000.0)
    with pytest.raises(TokenRefused, match="another episode"):
        TOKENS.tenant(token, "ep-2", now=1000.0)


@pytest.mark.parametrize("alter", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # the signature
    lambda t: "x" + t,  # the payload
    lambda t: t.split(".")[0],  # no signature
    lambda t: "%%%." + t.split(".")[1],  # not base64
    lambda t: "",  # none
])
def test_an_altered_token_is_refused(alter) -> None:
    token = TOKENS.issue("t_abc", "ep-1", now=1000.0)
    with pytest.raises(TokenRefused):
        TOKENS.tenant(alter(token), "ep-1", now=1000.0)


def test_another_servers_token_is_refused() -> None:
    other = StreamTokens(secret=b"o" * 32, ttl_s=600).issue("t_abc", "ep-1", now=1000.0)
    with pytest.raises(TokenRefused, match="not one this server gave"):
        TOKENS.tenant(other, "ep-1", now=1000.0)


def test_a_forged_payload_cannot_borrow_a_signature() -> None:
    """Another tenant's name in a real token's payload: the signature no longer matches."""
    token = TOKENS.issue("t_abc", "ep-1", now=1000.0)
    forged = TOKENS.issue("t_evil", "ep-1", now=1000.0).split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(TokenRefused):
        TOKENS.tenant(forged, "ep-1", now=1000.0)
