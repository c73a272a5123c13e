"""API keys as tenants, per-tenant request rates, idempotent ids and artifact names: pure rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.access import (
    LOCAL_TENANT,
    ApiKeys,
    TenantRateLimiter,
    check_idempotency_key,
    episode_ids,
)
from pipelines.episode_folder import Artifact, EpisodeFolder
from pipelines.settings import SettingsError, load_settings

KEY_A = "alpha-0123456789abcdef"
KEY_B = "bravo-0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_env(clean_env: None) -> None:
    """Every test here reads settings from a clean environment."""


def test_each_key_is_its_own_tenant_and_names_no_key() -> None:
    keys = ApiKeys([KEY_A, KEY_B])
    a, b = keys.tenant(f"Bearer {KEY_A}"), keys.tenant(f"bearer  {KEY_B} ")
    assert a and b and a != b
    assert KEY_A not in a and keys.tenant(f"Bearer {KEY_A}") == a  # stable, and not the key
    for bad in (None, "", "Bearer", f"Basic {KEY_A}", f"Bearer {KEY_A}x", KEY_A):
        assert keys.tenant(bad) is None


def test_keys_are_kept_only_as_digests() -> None:
    keys = ApiKeys([KEY_A])
    assert KEY_A not in repr(vars(keys)) and KEY_A.encode() not in b"".join(keys._digests)


def test_without_keys_everyone_is_the_local_tenant() -> None:
    keys = ApiKeys([])
    assert not keys.enabled and keys.tenant(None) == LOCAL_TENANT


def test_keys_from_settings_and_file(tmp_path: Path) -> None:
    file = tmp_path / "keys.txt"
    file.write_text(f"# operators\n{KEY_B}\n\n", encoding="utf-8")
    keys = ApiKeys.from_settings(load_settings(api_keys=f" {KEY_A} ,", api_keys_file=str(file)))
    assert keys.tenant(f"Bearer {KEY_A}") and keys.tenant(f"Bearer {KEY_B}")
    assert keys.tenant("Bearer # operators") is None


def test_short_keys_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="shorter than 16"):
        ApiKeys.from_settings(load_settings(api_keys="secret"))
    with pytest.raises(SettingsError, match="cannot read api_keys_file"):
        ApiKeys.from_settings(load_settings(api_keys_file=str(tmp_path / "none.txt")))


def test_rate_limiter_allows_a_minute_then_refills_per_tenant() -> None:
    now = [0.0]
    limiter = TenantRateLimiter(60, clock=lambda: now[0])
    assert all(limiter.take("a") == 0 for _ in range(60))
    wait = limiter.take("a")
    assert wait == pytest.approx(1.0)
    assert limiter.take("b") == 0  # another tenant has its own minute
    now[0] += 1.0
    assert limiter.take("a") == 0 and limiter.take("a") > 0


def test_idempotent_ids_are_stable_per_tenant_and_key() -> None:
    assert episode_ids("t1", None, 3) is None
    one = episode_ids("t1", "order-1", 1)
    assert one == episode_ids("t1", "order-1", 1) != episode_ids("t2", "order-1", 1)
    many = episode_ids("t1", "order-1", 3)
    assert many is not None and len(set(many)) == 3


@pytest.mark.parametrize("key", ["", "k" * 256, "has space", "tab\t", "ünïcode"])
def test_bad_idempotency_keys(key: str) -> None:
    with pytest.raises(ValueError, match="Idempotency-Key"):
        check_idempotency_key(key)


def test_artifacts_only_by_name_from_the_table(tmp_path: Path) -> None:
    assert Artifact.named("script.json") is Artifact.SCRIPT_JSON
    for name in ("../secret.txt", "media/scene001/image.png", "", "script.json/", "SCRIPT.JSON"):
        assert Artifact.named(name) is None
    folder = EpisodeFolder("e1")  # keys in the storage, never a path of some node
    assert folder.artifact(Artifact.VIDEO) == "e1/episode.mp4"
    assert folder.speech(2, 3) == "e1/media/scene002/line03.wav"
    assert {a.media_type.split(";")[0] for a in Artifact} == {
        "application/json", "text/markdown", "application/x-subrip", "image/png", "video/mp4"}