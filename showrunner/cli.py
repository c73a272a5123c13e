"""The ``showrunner`` command (also ``python -m showrunner``).

Bad input stops here with one line that names the problem and exit code 2, before anything runs.
An episode id the store does not have, or a store that cannot be read, is bad input too.

Exit codes: 0 when a run's episodes all completed, a listing or a cancel was answered, or
``open`` was stopped (Ctrl-C); 1 when a run ended with an episode not completed; 2 for bad input;
130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from actors.state_store import StateStoreError
from pipelines.models import EpisodeRequest, EpisodeStatus
from pipelines.premises import (
    MAX_FILE_BYTES,
    BadInput,
    build_request,
    expand,
    parse_premises_file,
)
from pipelines.settings import (
    ProviderKind,
    Settings,
    SettingsError,
    Tier,
    load_settings,
    settings_reference,
)
from pipelines.storage import Storage
from showrunner import stored

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"showrunner: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _settings_view(settings: Settings) -> dict:
    """The effective settings as JSON-ready data; secrets shown only as set or unset."""
    data = settings.model_dump(mode="json")
    for kind in ProviderKind:
        provider = data[kind.value]
        provider["api_key"] = "(set)" if provider["api_key"] else None
        provider["base_url"] = provider["base_url"] or "(bundled local server)"
        for deployment in provider["deployments"]:
            deployment["api_key"] = "(set)" if deployment["api_key"] else None
    data["api_keys"] = "(set)" if data["api_keys"] else None
    data["state_url"] = "(set)" if data["state_url"] else None
    return data


STORAGE_HELP = ("the storage: a folder or s3://bucket/prefix (default: settings, "
                "SHOWRUNNER_STORAGE, ./out)")
LIST_LIMIT, MAX_LIST_LIMIT = 50, 100_000
OPEN_PORT = 8765  # showrunner open


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR_OR_URL",
                        help="where episodes and report.json go: a folder or s3://bucket/prefix "
                        "(default: settings, SHOWRUNNER_STORAGE, ./out)")
    parser.add_argument("--report", metavar="FILE", help="also write the run report here")
    parser.add_argument("--latency-scale", type=float, default=1.0, metavar="X",
                        help="scale the bundled server's latencies (default: 1, realistic)")
    parser.add_argument("--dashboard", action="store_true",
                        help="start Ray's dashboard too, on 127.0.0.1, and print its address "
                        "(a joined cluster's own is printed as is)")
    parser.add_argument("--no-cache", action="store_true",
                        help="send every call, even one asked before (default: an identical "
                        "earlier call's answer is used, paying once)")


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR_OR_URL", help=STORAGE_HELP)
    parser.add_argument("--limit", type=int, default=LIST_LIMIT, metavar="N",
                        help=f"the newest N episodes (default: {LIST_LIMIT})")


def build_parser() -> argparse.ArgumentParser:
    from local_server import cli as local_server_cli

    parser = argparse.ArgumentParser(
        prog="showrunner",
        description="Turn story premises into finished episodes, as fast as rate limits allow.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file (env overrides it)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="print the effective settings (secrets masked)")
    config.add_argument(
        "--reference", action="store_true",
        help="print every setting's environment variable, default and meaning as Markdown",
    )

    run = commands.add_parser("run", help="write episodes from premises")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--premise", metavar="TEXT", help="one premise")
    source.add_argument("--premises-file", metavar="FILE",
                        help="one premise a line, or JSON lines of episode requests")
    run.add_argument("--episodes", type=int, metavar="N",
                     help="episodes to write, cycling through the premises (default: one each)")
    run.add_argument("--scenes", type=int, metavar="M", help="scenes per episode (1-200)")
    run.add_argument("--lines", type=int, metavar="K", help="dialogue lines per scene (1-40)")
    run.add_argument("--continuity", metavar="MODE",
                     help="chain (default), none, window:K or batch:K")
    run.add_argument("--script-only", action="store_true",
                     help="stop at the script: no speech, pictures, clips or MP4")
    run.add_argument("--tier", choices=get_args(Tier),
                     help="processing tier of the chat calls: flex is billed at half price, "
                     "answers more slowly and at times has no capacity (default: settings, "
                     "standard)")
    _add_output_flags(run)

    demo = commands.add_parser(
        "demo", help="3 episodes x 6 scenes on the bundled local providers, with live progress"
    )
    _add_output_flags(demo)

    resume = commands.add_parser(
        "resume", help="finish the unfinished episodes of a storage (after a crash or a kill)")
    _add_output_flags(resume)

    status = commands.add_parser(
        "status", help="how the episodes are, or one in detail (reads the store; no Ray)")
    status.add_argument("id", nargs="?", metavar="ID", help="one episode, in detail")
    _add_store_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    listing = commands.add_parser("list", help="the storage's episodes, newest last")
    _add_store_flags(listing)
    listing.add_argument("--status", choices=[s.value for s in EpisodeStatus],
                         help="only episodes in this status")
    listing.add_argument("--json", action="store_true", help="print JSON")

    cancel = commands.add_parser(
        "cancel", help="cancel an episode, whichever process runs it (or runs it next)")
    cancel.add_argument("id", metavar="ID", help="the episode")
    cancel.add_argument("--output", metavar="DIR_OR_URL", help=STORAGE_HELP)

    prune = commands.add_parser(
        "prune", help="remove the rows and files of episodes that finished long ago")
    prune.add_argument("--older-than", metavar="DAYS", type=float, required=True,
                       help="finished more than this many days ago (0: every finished one)")
    prune.add_argument("--output", metavar="DIR_OR_URL", help=STORAGE_HELP)

    serve = commands.add_parser(
        "serve", help="run the HTTP API (Ray Serve) until Ctrl-C"
    )
    serve.add_argument("--host", help="address to listen on (default: settings, 127.0.0.1); "
                       "anything but loopback needs API keys")
    serve.add_argument("--port", type=int, help="port (default: settings, 8000)")
    serve.add_argument("--latency-scale", type=float, metavar="X",
                       help="scale the bundled server's latencies (default: settings, 1)")

    opened = commands.add_parser(
        "open", help="a finished run's folder in the studio page, read-only, on 127.0.0.1 "
        "(no Ray), until Ctrl-C")
    opened.add_argument("dir", nargs="?", metavar="DIR",
                        help="the run's folder, where its report.json is (default: settings, "
                        "SHOWRUNNER_STORAGE, ./out)")
    opened.add_argument("--port", type=int, default=OPEN_PORT, metavar="N",
                        help=f"port on 127.0.0.1 (default: {OPEN_PORT}; 0: any free one)")

    server = commands.add_parser(
        "local-server", help="run the bundled OpenAI-compatible server on 127.0.0.1"
    )
    local_server_cli.add_arguments(server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "local-server":
        from local_server import cli as local_server_cli

        local_server_cli.run(local_server_cli.config_from_args(args), port=args.port)
        return 0
    if args.command == "config" and args.reference:
        # Needs no settings: an unknown setting's error points here for the real names.
        print(settings_reference())
        return 0
    try:
        settings = load_settings(args.config)
    except SettingsError as err:
        return _fail(str(err))
    if args.command == "config":
        print(json.dumps(_settings_view(settings), indent=2))
        return 0
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "open":
        return _open_run(settings, args)
    try:
        storage = settings.open_storage(args.output)
    except ValueError as err:  # an --output that no storage takes
        return _fail(f"--output {args.output}: {err}")
    try:
        if args.command in STORE_COMMANDS:
            return _store_command(args, settings, storage)
        return _run(args, settings, storage)
    except (BadInput, StateStoreError, SettingsError, stored.UnknownEpisode,
            stored.NoStore) as err:
        return _fail(str(err))


# Read the state store directly: no Ray, nothing created.
STORE_COMMANDS = ("status", "list", "cancel", "prune")


def _store_command(args: argparse.Namespace, settings: Settings, storage: Storage) -> int:
    at = stored.StoreAt.of(settings, storage)
    if args.command == "cancel":
        return stored.cancel(at, args.id)
    if args.command == "prune":
        if not 0 <= args.older_than <= 36_500:
            raise BadInput(f"--older-than must be from 0 to 36500 days, not {args.older_than:g}")
        return stored.prune(at, storage, args.older_than)
    if not 1 <= args.limit <= MAX_LIST_LIMIT:
        raise BadInput(f"--limit must be from 1 to {MAX_LIST_LIMIT}, not {args.limit}")
    if args.command == "list":
        status = EpisodeStatus(args.status) if args.status else None
        return stored.list_episodes(at, status, args.limit, args.json)
    if args.id is not None:
        return stored.status_of(at, storage, args.id, args.json)
    return stored.status_of_all(at, args.limit, args.json)


def _run(args: argparse.Namespace, settings: Settings, storage: Storage) -> int:
    """``run``, ``demo`` and ``resume``: each takes up the storage's unfinished episodes."""
    if not 0 <= args.latency_scale <= 100:
        raise BadInput(f"--latency-scale must be from 0 to 100, not {args.latency_scale}")
    requests = _requests(args) if args.command != "resume" else []
    at = stored.StoreAt.of(settings, storage)
    earlier = stored.unfinished(at)  # creates nothing; a store it cannot read stops here
    if args.command == "resume" and not earlier:
        print(f"nothing to resume in {at.label}", file=sys.stderr)
        return 0
    if args.no_cache:
        settings = settings.model_copy(update={"cache": False})
    _writable(storage)  # last: nothing is created for bad input
    from showrunner.console import run_and_show
    from showrunner.launcher import RunInProgress

    try:
        return run_and_show(settings, requests, storage,
                            Path(args.report) if args.report else None, args.latency_scale,
                            earlier, dashboard=args.dashboard)
    except RunInProgress as err:
        return _fail(str(err))


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipelines.access import ApiKeys
    from pipelines.settings import describe_validation_error

    changes = {k: v for k, v in (("host", args.host), ("port", args.port),
                                 ("local_latency_scale", args.latency_scale)) if v is not None}
    try:
        service = type(settings.service).model_validate(
            {**settings.service.model_dump(), **changes})
        keys = ApiKeys.from_settings(settings)
    except ValidationError as err:
        return _fail(describe_validation_error(err).replace("invalid setting ", "invalid --"))
    except SettingsError as err:
        return _fail(str(err))
    from serve_app import is_loopback, serve_forever

    if not keys.enabled and not is_loopback(service.host):
        return _fail(f"no API keys are configured (SHOWRUNNER_API_KEYS or "
                     f"SHOWRUNNER_API_KEYS_FILE): refusing to listen on {service.host}; "
                     "set keys, or listen on 127.0.0.1")
    return serve_forever(settings.model_copy(update={"service": service}), keys.enabled)


def _open_run(settings: Settings, args: argparse.Namespace) -> int:
    """``open``: a local folder only (its default the settings' storage, as ``--output``'s)."""
    from showrunner import open_run

    where = args.dir if args.dir is not None else settings.storage
    if not 0 <= args.port <= 65535:
        return _fail(f"--port must be from 0 to 65535, not {args.port}")
    try:
        folder = open_run.RunFolder.open(where.removeprefix("file://"))
    except open_run.NotARun as err:
        return _fail(str(err))
    try:
        sock = open_run.listen(args.port)
    except OSError as err:
        return _fail(f"cannot listen on {open_run.HOST}:{args.port}: {err.strerror or err}")
    service = settings.service
    return open_run.serve(folder, sock, {"max_batch": service.max_batch,
                                         "max_scenes_per_request": service.max_scenes_per_request})


DEMO_PREMISES = (
    "A retired lighthouse keeper and a runaway teenager restore a lighthouse before a storm.",
    "Two rival food-truck owners are stuck together at a snowed-in winter festival.",
    "A small-town radio host starts receiving calls from listeners thirty years in the past.",
)


def _requests(args: argparse.Namespace) -> list[EpisodeRequest]:
    if args.command == "demo":
        return [build_request({"premise": p, "scenes": 6, "lines_per_scene": 4, "seed": i})
                for i, p in enumerate(DEMO_PREMISES)]
    defaults = {k: v for k, v in (("scenes", args.scenes), ("lines_per_scene", args.lines),
                                  ("continuity", args.continuity), ("tier", args.tier))
                if v is not None}
    if args.script_only:
        defaults["media"] = False
    if args.premise is not None:
        base = [build_request({**defaults, "premise": args.premise})]
    else:
        base = parse_premises_file(_read_premises(args.premises_file), defaults,
                                   f"premises file {args.premises_file}")
    return expand(base, args.episodes)


def _read_premises(path: str) -> str:
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise BadInput(f"premises file {path} is over {MAX_FILE_BYTES // 2**20} MiB")
        return file.read_text(encoding="utf-8")
    except OSError as err:
        raise BadInput(f"cannot read premises file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"premises file {path} is not UTF-8 text") from None


def _writable(storage: Storage) -> None:
    try:
        storage.probe()
    except OSError as err:
        what = "create output directory" if storage.local else "write to the storage"
        raise BadInput(f"cannot {what} {storage.where()}: {err.strerror or err}") from None


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
