"""The server's flags: parsed into a ``ServerConfig``, refused with argparse's exit 2 when wrong;
and ``LocalServer``'s options checked before any process starts."""

from __future__ import annotations

import argparse

import pytest

from local_server.cli import add_arguments, config_from_args
from local_server.config import EndpointConfig, ServerConfig
from local_server.process import LocalServer, flags_of


def parse(*argv: str) -> ServerConfig:
    parser = argparse.ArgumentParser(prog="test")
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv), parser)


def test_no_flags_is_the_default_config() -> None:
    assert parse() == ServerConfig()


def test_flags_set_the_endpoints_latencies_and_limits() -> None:
    config = parse("--seed", "7", "--latency-scale", "0", "--llm-rpm", "600", "--llm-tpm",
                   "90000", "--llm-latency", "0.1", "--llm-jitter", "0", "--tts-rpm", "50",
                   "--fault-rate", "0.1", "--hang-rate", "0.2", "--malformed-rate", "0.3",
                   "--hang-s", "5", "--quota-exhausted", "--require-key", "sk-x",
                   "--burst-s", "2")
    assert config.endpoints["chat"] == EndpointConfig(latency_s=0.1, jitter_s=0.0, rpm=600,
                                                      tpm=90000)
    assert config.endpoints["speech"].rpm == 50 and config.endpoints["speech"].tpm is None
    assert (config.seed, config.latency_scale, config.burst_s, config.hang_s) == (7, 0, 2, 5)
    assert (config.fault_rate, config.hang_rate, config.malformed_rate) == (0.1, 0.2, 0.3)
    assert config.quota_exhausted and config.require_key == "sk-x"


@pytest.mark.parametrize(("argv", "says"), [
    (["--fault-rate", "1.5"], "--fault-rate: must be from 0 to 1"),
    (["--hang-rate", "-0.1"], "--hang-rate: must be from 0 to 1"),
    (["--llm-rpm", "0"], "--llm-rpm: must be above 0"),
    (["--llm-tpm", "lots"], "--llm-tpm: not a number"),
    (["--latency-scale", "-1"], "--latency-scale: must be 0 or more"),
    (["--port", "70000"], "--port: must be from 0 to 65535"),
    (["--fault-rate", "0.6", "--malformed-rate", "0.6"], "must not exceed 1"),
])
def test_bad_flags_exit_2_with_the_reason(argv: list[str], says: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_a_config_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="fault_rate"):
        ServerConfig(fault_rate=2)
    with pytest.raises(ValueError, match="rpm"):
        ServerConfig().with_endpoint("chat", rpm=0)
    assert ServerConfig().with_endpoint("chat", rpm=60).endpoints["chat"].rpm == 60


def test_clips_can_be_rendered_small_and_cheap_for_benchmarks() -> None:
    assert (ServerConfig().video_render_size, ServerConfig().video_render_fps) == (None, 24)
    config = parse("--video-render-size", "320x180", "--video-render-fps", "8")
    assert (config.video_render_size, config.video_render_fps) == ("320x180", 8)


@pytest.mark.parametrize(("argv", "says"), [
    (["--video-render-size", "320"], "WIDTHxHEIGHT"),
    (["--video-render-size", "321x180"], "even"),
    (["--video-render-fps", "0"], "--video-render-fps: must be from 1 to 60"),
    (["--flex-unavailable-rate", "2"], "--flex-unavailable-rate: must be from 0 to 1"),
    (["--flex-latency-factor", "0"], "--flex-latency-factor: must be above 0"),
    (["--models", " , "], "--models: must name at least one model"),
    (["--speech-format", "ogg"], "--speech-format: invalid choice"),
    (["--image-answer", "png"], "--image-answer: invalid choice"),
])
def test_bad_flags_exit_2(argv: list[str], says: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_a_render_size_with_an_odd_side_is_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        ServerConfig(video_render_size="100x51")


def test_local_server_options_become_flags_and_unknown_ones_fail_early() -> None:
    assert flags_of({"llm_rpm": 600, "quota_exhausted": True, "require_key": None,
                     "hang_rate": 0.5, "seed": False}) == [
        "--llm-rpm", "600", "--quota-exhausted", "--hang-rate", "0.5"]
    with pytest.raises(TypeError, match="llm_rmp"):
        LocalServer(llm_rmp=600)
    with pytest.raises(TypeError, match="free port"):
        LocalServer(port=8000)
