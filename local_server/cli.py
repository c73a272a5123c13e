"""Flags of the bundled server, shared by ``python -m local_server`` and
``showrunner local-server``: ``add_arguments`` → ``config_from_args`` → ``run``.

Importing this module has no side effects; only ``main`` and ``run`` do anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable

from local_server.config import (
    IMAGE_ANSWERS,
    SPEECH_FORMATS,
    EndpointConfig,
    ServerConfig,
    default_endpoints,
    parse_size,
)

HOST = "127.0.0.1"  # loopback only: this server has no authentication worth the name
DEFAULT_PORT = 8000
# Endpoint name -> the provider kind its flags are named after (--llm-rpm, --tts-rpm, ...).
FLAG_PREFIX = {"chat": "llm", "speech": "tts", "image": "image", "video": "video"}
# How long a stopping server lets requests in flight finish; hanging ones are then cancelled.
SHUTDOWN_GRACE_S = 0.5
# No access log (it costs more than a tiny answer); a client that disconnects cancels its
# handler, so a hanging request does not outlive the client that gave up on it.
RUNNER_OPTIONS = {"access_log": None, "handler_cancellation": True,
                  "shutdown_timeout": SHUTDOWN_GRACE_S}


def _number(check: str, test: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: a float passing ``test``, else the message ``must be <check>``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {check}, not {text}")
        return value

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


_fraction = _number("from 0 to 1", lambda v: 0.0 <= v <= 1.0)
_positive = _number("above 0", lambda v: v > 0)
_non_negative = _number("0 or more", lambda v: v >= 0)


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {text}")
        return value

    parse.__name__ = "integer"
    return parse


def _size(text: str) -> str:
    """An argparse type: ``WIDTHxHEIGHT`` with even sides."""
    try:
        parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _names(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names, at least one (``a,b`` → ``("a", "b")``)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"must name at least one model, not {text!r}")
    return names


_names.__name__ = "names"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's flags to ``parser`` (its own, or a subcommand's)."""
    parser.add_argument("--port", type=_count(0, 65535), default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1; 0 picks a free one (default {DEFAULT_PORT})")
    parser.add_argument("--seed", type=int, default=0, help="fixes answers, latencies, faults")
    parser.add_argument("--latency-scale", type=_non_negative, default=1.0, metavar="X",
                        help="multiplies every latency (0: answer at once)")
    for endpoint, flag in FLAG_PREFIX.items():
        default = default_endpoints()[endpoint]
        parser.add_argument(f"--{flag}-latency", type=_non_negative, default=None, metavar="S",
                            help=f"mean {endpoint} latency, seconds before scaling "
                                 f"(default {default.latency_s:g})")
        parser.add_argument(f"--{flag}-jitter", type=_non_negative, default=None, metavar="S",
                            help=f"{endpoint} latency varies uniformly by +/- this "
                                 f"(default {default.jitter_s:g})")
        parser.add_argument(f"--{flag}-rpm", type=_positive, default=None, metavar="R",
                            help=f"{endpoint} requests per minute (default: no limit)")
    parser.add_argument("--llm-tpm", type=_positive, default=None, metavar="T",
                        help="chat tokens per minute (default: no limit)")
    parser.add_argument("--burst-s", type=_positive, default=1.0, metavar="S",
                        help="bucket capacity in seconds of quota (default 1, as OpenAI)")
    parser.add_argument("--fault-rate", type=_fraction, default=0.0, metavar="F",
                        help="share of admitted requests answered 500/502/503")
    parser.add_argument("--hang-rate", type=_fraction, default=0.0, metavar="H",
                        help="share of admitted requests held --hang-s before the answer")
    parser.add_argument("--hang-s", type=_non_negative, default=600.0, metavar="S",
                        help="how long a hang lasts (default 600)")
    parser.add_argument("--malformed-rate", type=_fraction, default=0.0, metavar="M",
                        help="share of admitted requests answered 200 with a body not JSON")
    parser.add_argument("--quota-exhausted", action="store_true",
                        help="answer every request 429 insufficient_quota")
    parser.add_argument("--require-key", default=None, metavar="KEY",
                        help="answer 401 invalid_api_key to any other bearer key")
    parser.add_argument("--video-job-s", type=_non_negative, default=60.0, metavar="S",
                        help="how long a clip job takes, seconds before scaling (default 60)")
    parser.add_argument("--video-max-jobs", type=_count(0, 100_000), default=10, metavar="N",
                        help="clip jobs in progress at once; more is a 429 (default 10)")
    parser.add_argument("--video-fail-rate", type=_fraction, default=0.0, metavar="F",
                        help="share of clip jobs that end failed")
    parser.add_argument("--video-render-size", type=_size, default=None, metavar="WxH",
                        help="render every clip this size, whatever the job asks: cheap clips "
                             "for benchmarks (default: the job's size)")
    parser.add_argument("--video-render-fps", type=_count(1, 60), default=24, metavar="N",
                        help="frames per second of rendered clips (default 24)")
    parser.add_argument("--flex-latency-factor", type=_positive, default=3.0, metavar="X",
                        help="multiplies the latency of service_tier=flex chat (default 3)")
    parser.add_argument("--flex-unavailable-rate", type=_fraction, default=0.0, metavar="F",
                        help="share of flex chat requests answered 429 resource_unavailable")
    parser.add_argument("--flex-models", type=_names, default=None, metavar="A,B",
                        help="the models that take service_tier=flex; others: 400 "
                             "(default: every model)")
    parser.add_argument("--image-answer", choices=IMAGE_ANSWERS, default="b64_json",
                        help="what an image request naming no response_format gets "
                             "(default b64_json)")
    parser.add_argument("--speech-format", choices=SPEECH_FORMATS, default=None,
                        help="answer all speech in this format, whatever the request asks "
                             "(default: the format asked)")
    parser.add_argument("--models", type=_names, default=None, metavar="A,B",
                        help="the models that exist; any other is a 404 model_not_found "
                             "(default: any model name is served)")


def config_from_args(args: argparse.Namespace,
                     parser: argparse.ArgumentParser | None = None) -> ServerConfig:
    """The config the flags describe. A combination no single flag can reject (fault, hang and
    malformed rates summing past 1) exits 2 with an argparse-style message, through ``parser``
    when given."""
    endpoints: dict[str, EndpointConfig] = {}
    for endpoint, default in default_endpoints().items():
        flag = FLAG_PREFIX[endpoint]
        latency = getattr(args, f"{flag}_latency")
        jitter = getattr(args, f"{flag}_jitter")
        endpoints[endpoint] = EndpointConfig(
            latency_s=default.latency_s if latency is None else latency,
            jitter_s=default.jitter_s if jitter is None else jitter,
            rpm=getattr(args, f"{flag}_rpm"),
            tpm=args.llm_tpm if endpoint == "chat" else None,
        )
    try:
        return ServerConfig(
            seed=args.seed, latency_scale=args.latency_scale, burst_s=args.burst_s,
            fault_rate=args.fault_rate, hang_rate=args.hang_rate, hang_s=args.hang_s,
            malformed_rate=args.malformed_rate, quota_exhausted=args.quota_exhausted,
            require_key=args.require_key, endpoints=endpoints,
            video_job_s=args.video_job_s, video_max_jobs=args.video_max_jobs,
            video_fail_rate=args.video_fail_rate, video_render_size=args.video_render_size,
            video_render_fps=args.video_render_fps,
            flex_latency_factor=args.flex_latency_factor,
            flex_unavailable_rate=args.flex_unavailable_rate, flex_models=args.flex_models,
            image_answer=args.image_answer, speech_format=args.speech_format,
            models=args.models,
        )
    except ValueError as err:
        if parser is not None:
            parser.error(str(err))  # exits 2
        print(f"local_server: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve(config: ServerConfig, host: str = HOST, port: int = DEFAULT_PORT) -> None:
    """Serve until SIGTERM or SIGINT; announce the bound port on one stdout line."""
    # Imported here: building a parser (``showrunner --help``) needs none of the server.
    from aiohttp import web

    from local_server.app import build_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before the port is announced: a parent may signal as soon as it reads the line.
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not in the main thread (an embedding app): the caller stops us by cancelling.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(config), **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"listening on http://{host}:{bound}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(sig)


def run(config: ServerConfig, host: str = HOST, port: int = DEFAULT_PORT) -> None:
    """Serve ``config`` on ``host:port`` (0: a free port) until SIGTERM or Ctrl-C."""
    asyncio.run(serve(config, host, port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local_server",
        description="Showrunner's bundled OpenAI-compatible server (offline, loopback only).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    try:
        run(config, port=args.port)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        print(f"local_server: error: cannot listen on {HOST}:{args.port}: {reason}",
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C before the server was up: nothing to clean
        sys.exit(130)
