"""``dsqlkit lambda serve``: the Lambda Invoke API for local Python handlers."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from dsqlkit.errors import ConfigError

DEFAULT_PORT = 9001


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lambda_command", metavar="ACTION")
    p = sub.add_parser(
        "serve", help="serve functions over the Lambda Invoke API (boto3, aws lambda invoke)",
        description="Serve Python Lambda handlers over the AWS Lambda Invoke API. Each "
                    "concurrent invocation runs in its own execution environment (a process, "
                    "reused while warm, frozen between invocations).",
    )
    p.add_argument("--functions", metavar="DIR",
                   help="a directory whose subdirectories with handler.py are functions "
                        "named after them (the directory is the code root)")
    p.add_argument("--function", dest="function_specs", action="append", default=[],
                   metavar="NAME=PATH.HANDLER",
                   help="one more function, e.g. ch04=examples/dat401/ch04/handler.handler "
                        "(repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--concurrency", type=int, default=10, metavar="N",
                   help="most execution environments per function (default 10)")
    p.add_argument("--on-throttle", choices=["queue", "reject"], default="queue",
                   help="beyond --concurrency: wait for an idle environment (queue, default) "
                        "or answer 429 TooManyRequestsException as Lambda does (reject)")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="an environment variable for the functions; KEY alone copies it from "
                        "this shell (repeatable)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="KEY=VALUE lines (or 'export KEY=VALUE', as dsqlkit local prints)")
    p.add_argument("--timeout", type=float, default=None,
                   help="function timeout in seconds (default 30)")
    p.add_argument("--memory", type=int, default=None, metavar="MB",
                   help="reported memory size (default 512)")
    p.add_argument("--region", default=None,
                   help="the region in ARNs and AWS_REGION (default: AWS_REGION, else "
                        "us-east-1)")
    p.add_argument("--no-freeze", dest="freeze", action="store_false",
                   help="keep environments running between invocations (Lambda freezes them)")
    p.add_argument("--no-inherit-env", dest="inherit_env", action="store_false",
                   help="do not pass this shell's AWS credentials and configuration on")
    p.add_argument("--quiet", action="store_true", help="do not print function output")
    p.add_argument("--json", action="store_true",
                   help="print the endpoint as one JSON line when ready (for scripts)")


def parse_env(items: list[str], files: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError as exc:
            raise ConfigError(f"--env-file {name}: {exc.strerror}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):].strip()
            key, eq, value = line.partition("=")
            if not eq or not key.isidentifier():
                raise ConfigError(f"--env-file {name}, line {number}: expected KEY=VALUE")
            try:
                parts = shlex.split(value)
            except ValueError as exc:
                raise ConfigError(f"--env-file {name}, line {number}: {exc}") from None
            env[key] = " ".join(parts)
    for item in items:
        key, eq, value = item.partition("=")
        if not key.isidentifier():
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE or KEY")
        if not eq:
            if key not in os.environ:
                raise ConfigError(f"--env {key}: not set in this shell")
            value = os.environ[key]
        env[key] = value
    return env


def run(args: argparse.Namespace) -> int:
    if args.lambda_command != "serve":
        print("usage: dsqlkit lambda serve --functions DIR [options]", file=sys.stderr)
        return 2
    from dsqlkit.lambda_local.server import LambdaServer

    lock = threading.Lock()

    def sink(function: str, text: str) -> None:
        with lock:
            for line in text.splitlines():
                print(f"[{function}] {line}", file=sys.stderr, flush=True)

    try:
        env = parse_env(args.env, args.env_file)
        server = LambdaServer(
            args.functions, functions=args.function_specs, env=env,
            concurrency=args.concurrency, host=args.host, port=args.port, region=args.region,
            timeout=args.timeout, memory_mb=args.memory, on_throttle=args.on_throttle,
            freeze=args.freeze, inherit_env=args.inherit_env,
            log=None if args.quiet else sink,
        )
        server.start()
    except (ConfigError, OSError) as exc:
        print(f"dsqlkit lambda: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    names = sorted(server.specs)
    if args.json:
        print(json.dumps({"endpoint_url": server.endpoint_url, "port": server.port,
                          "functions": names, "region": server.region}), flush=True)
    else:
        first = names[0]
        print(f"dsqlkit lambda: serving {', '.join(names)} on {server.endpoint_url}\n"
              f"  concurrency {server.concurrency} per function "
              f"({'queue' if server.on_throttle == 'queue' else '429'} beyond it)\n\n"
              f"  aws lambda invoke --endpoint-url {server.endpoint_url} "
              f"--function-name {first} --payload '{{}}' out.json\n"
              f"  boto3.client('lambda', endpoint_url='{server.endpoint_url}')"
              f".invoke(FunctionName='{first}')\n\n"
              "Press Ctrl-C to stop.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
