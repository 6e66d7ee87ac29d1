"""`python -m lab.mocks KIND [--host 127.0.0.1] [--port 0] [--ready-file PATH] [spec options]`.

The spec comes from `--spec-file PATH` (what the sweep passes: a spec of any size fits, where a
command line has a length limit), `--spec-json '{...}'`, and/or one flag per `ServiceSpec`
field (`--capacity 8`, `--queue 200`, `--per-item-ms 0.3`, ...); flags win.
Nested fields take JSON or a compact `key=value,...` form, with an optional `dist:` tag:
    --latency lognormal:median_ms=15,p99_ms=60     --rate-limit per_s=100,burst=100
    --brownouts start_s=5,duration_s=2,latency_x=4   (repeatable)
Once listening it prints the URL and writes `{"url", "pid", "kind", "token"}` to the ready file
(atomically, mode 0600). The `/_lab/` routes need the token (`$LAB_MOCK_TOKEN`, else a new one;
see `lab.mocks.control`). SIGTERM or SIGINT stop it with exit code 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, exit_status
from lab.infra.files import read_file
from lab.limits import SPEC_BYTES_MAX
from lab.mocks.server import run
from lab.mocks.spec import KINDS, ServiceSpec, json_object, parse_spec

_LIST_FIELDS = {"brownouts"}


def parse_value(text: str) -> Any:
    """JSON when it parses; else `tag:k=v,k=v` as a dict; else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "=" not in text:
        return text
    tag, sep, rest = text.partition(":")
    out: dict[str, Any] = {}
    if sep and "=" not in tag:
        out["dist"] = tag
        text = rest
    for pair in filter(None, text.split(",")):
        key, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(f"{text!r}: expected key=value pairs separated by commas")
        out[key.strip()] = parse_value(value.strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.mocks", description="Run one mock IO service on loopback."
    )
    parser.add_argument("kind", choices=KINDS, help="which mock to run")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--ready-file", type=Path, help="where to write url and pid once up")
    parser.add_argument(
        "--listen-fd",
        type=int,
        help="serve on this inherited listening socket (a parent bound it: no port race)",
    )
    parser.add_argument(
        "--allow-network",
        action="store_true",
        help="serve on a non-loopback address a parent bound (a Ray node's own address, so "
        "workers on other hosts reach the mock); loopback only without it",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        help="on stop, write statistics and documents here; on start, continue from it if it "
        "exists (a restart within one trial)",
    )
    parser.add_argument("--spec-json", help="the whole ServiceSpec as JSON (flags override)")
    parser.add_argument(
        "--spec-file",
        type=Path,
        help="a file holding the whole ServiceSpec as JSON (flags override)",
    )
    group = parser.add_argument_group("spec fields (see lab.mocks.spec.ServiceSpec)")
    for name, field in ServiceSpec.model_fields.items():
        if name == "kind":
            continue
        flag = "--" + name.replace("_", "-")
        action = "append" if name in _LIST_FIELDS else "store"
        group.add_argument(flag, dest=name, action=action, metavar="VALUE", help=field.description)
    return parser


def _spec_data(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(where, the JSON object) of `--spec-file` or `--spec-json`, or ("flags", {})."""
    if args.spec_file is not None and args.spec_json is not None:
        raise ConfigError("give --spec-file or --spec-json, not both")
    if args.spec_file is not None:
        where = str(args.spec_file)
        return where, json_object(read_file(args.spec_file, limit=SPEC_BYTES_MAX), where=where)
    if args.spec_json is not None:
        return "--spec-json", json_object(args.spec_json, where="--spec-json")
    return "flags", {}


def spec_from_args(args: argparse.Namespace) -> ServiceSpec:
    where, data = _spec_data(args)
    if data.setdefault("kind", args.kind) != args.kind:
        raise ConfigError(f"{where}: kind is {data['kind']!r} but the command says {args.kind!r}")
    for name in ServiceSpec.model_fields:
        value = getattr(args, name, None) if name != "kind" else None
        if value is None:
            continue
        if name in _LIST_FIELDS:
            data[name] = [item for v in value for item in _as_list(parse_value(v))]
        else:
            data[name] = parse_value(value)
    return parse_spec(data, where="mock spec")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def serve() -> None:
        sock = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
        run(
            spec_from_args(args),
            host=args.host,
            port=args.port,
            ready_file=args.ready_file,
            on_ready=lambda url: print(url, flush=True),
            sock=sock,
            allow_network=args.allow_network,
            state_file=args.state_file,
        )

    return exit_status("lab.mocks", serve)


if __name__ == "__main__":
    sys.exit(main())
