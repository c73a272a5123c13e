"""Flags of the bundled server, shared by ``python -m local_server`` and
``showrunner local-server``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from local_server.app import build_app
from local_server.config import EndpointConfig, ServerConfig, default_endpoints

HOST = "127.0.0.1"  # loopback only: this server has no authentication worth the name
# Endpoint name -> the provider kind its flags are named after (--llm-rpm, --tts-rpm, ...).
FLAG_PREFIX = {"chat": "llm", "speech": "tts", "image": "image", "video": "video"}


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0, help="fixes answers, latencies, faults")
    parser.add_argument("--latency-scale", type=_non_negative, default=1.0,
                        help="multiplies every latency (0: answer at once)")
    for endpoint, flag in FLAG_PREFIX.items():
        default = default_endpoints()[endpoint]
        parser.add_argument(f"--{flag}-latency", type=_non_negative, default=None, metavar="S",
                            help=f"mean {endpoint} latency, seconds before scaling "
                                 f"(default {default.latency_s:g})")
        parser.add_argument(f"--{flag}-jitter", type=_non_negative, default=None, metavar="S",
                            help=f"{endpoint} latency varies uniformly by +/- this "
                                 f"(default {default.jitter_s:g})")
        parser.add_argument(f"--{flag}-rpm", type=_positive, default=None,
                            help=f"{endpoint} requests per minute (default: no limit)")
    parser.add_argument("--llm-tpm", type=_positive, default=None,
                        help="chat tokens per minute (default: no limit)")
    parser.add_argument("--video-job-s", type=_non_negative, default=60.0, metavar="S",
                        help="how long a clip job takes, seconds before scaling (default 60)")
    parser.add_argument("--video-max-jobs", type=int, default=10, metavar="N",
                        help="clip jobs in progress at once; more is a 429 (default 10)")
    parser.add_argument("--video-fail-rate", type=_fraction, default=0.0,
                        help="share of clip jobs that end failed")
    parser.add_argument("--burst-s", type=_positive, default=1.0,
                        help="bucket capacity in seconds of quota (OpenAI: about 1)")
    parser.add_argument("--fault-rate", type=_fraction, default=0.0, help="share of 5xx answers")
    parser.add_argument("--hang-rate", type=_fraction, default=0.0,
                        help="share of requests held past any sane timeout")
    parser.add_argument("--hang-s", type=_positive, default=600.0, help="how long a hang lasts")
    parser.add_argument("--malformed-rate", type=_fraction, default=0.0,
                        help="share of 200s whose body is not JSON")
    parser.add_argument("--quota-exhausted", action="store_true",
                        help="answer every request 429 insufficient_quota")
    parser.add_argument("--require-key", default=None, metavar="KEY",
                        help="refuse (401) any other bearer key")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    endpoints = {}
    for endpoint, default in default_endpoints().items():
        flag = FLAG_PREFIX[endpoint].replace("-", "_")
        latency = getattr(args, f"{flag}_latency")
        jitter = getattr(args, f"{flag}_jitter")
        endpoints[endpoint] = EndpointConfig(
            latency_s=default.latency_s if latency is None else latency,
            jitter_s=default.jitter_s if jitter is None else jitter,
            rpm=getattr(args, f"{flag}_rpm"),
            tpm=args.llm_tpm if endpoint == "chat" else None,
        )
    return ServerConfig(
        seed=args.seed, latency_scale=args.latency_scale, burst_s=args.burst_s,
        fault_rate=args.fault_rate, hang_rate=args.hang_rate, hang_s=args.hang_s,
        malformed_rate=args.malformed_rate, quota_exhausted=args.quota_exhausted,
        require_key=args.require_key, endpoints=endpoints,
        video_job_s=args.video_job_s, video_max_jobs=args.video_max_jobs,
        video_fail_rate=args.video_fail_rate,
    )


async def serve(config: ServerConfig, host: str = HOST, port: int = 8000) -> None:
    """Serve until SIGTERM or SIGINT; announce the bound port on one stdout line."""
    runner = web.AppRunner(build_app(config), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(config: ServerConfig, host: str = HOST, port: int = 8000) -> None:
    asyncio.run(serve(config, host, port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local_server",
        description="Showrunner's bundled OpenAI-compatible server (offline, loopback only).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(config_from_args(args), port=args.port)
    except OSError as err:
        print(f"local_server: error: cannot listen on port {args.port}: {err.strerror}",
              file=sys.stderr)
        sys.exit(1)
