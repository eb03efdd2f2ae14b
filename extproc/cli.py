"""The `extproc` command: serve, check, price, spend.

Every `serve` flag can also come from the environment as EXTPROC_<FLAG> (upper case,
dashes as underscores); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from extproc.config import ConfigError, load_config
from extproc.spend import SpendUnavailable
from extproc.store.connect import RedisAccess


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EXTPROC_{name}", default)


def _env_list(name: str) -> list[str]:
    raw = _env(name)
    return [p for p in raw.replace(",", ":").split(":") if p] if raw else []


LOG_LEVELS = ("debug", "info", "warning", "error")


def _option(
    parser: argparse.ArgumentParser,
    flag: str,
    default: Any = None,
    help: str = "",
    *,
    env: str | None = None,
    shown: str | None = None,
    **kwargs: Any,
) -> None:
    """A flag whose default comes from EXTPROC_<NAME> (`env`, or the flag's name in upper
    case), and whose --help says both. A value from the environment goes through the flag's
    `type` as a typed one would: a bad one is a usage error, not a traceback."""
    name = env or flag.lstrip("-").replace("-", "_").upper()
    value = _env(name)
    shown = shown or ("none" if default is None else str(default))
    note = f"[env EXTPROC_{name}; default: {shown}]"
    parser.add_argument(
        flag, default=value if value is not None else default, help=f"{help} {note}".strip(), **kwargs
    )


def _switch(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """An on/off flag, off by default, on with EXTPROC_<NAME>=true too."""
    name = flag.lstrip("-").replace("-", "_").upper()
    on = (_env(name, "false") or "false").lower() in ("1", "true", "yes")
    parser.add_argument(
        flag, action="store_true", default=on, help=f"{help} [env EXTPROC_{name}=true; default: off]"
    )


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _redis_access_flags(parser: argparse.ArgumentParser) -> None:
    """TLS files and a password for --redis-url (rediss://, redis+sentinel://, ACL users)."""
    _option(parser, "--redis-ca-file", metavar="FILE", help="the CA that signs Redis's certificate")
    _option(parser, "--redis-cert-file", metavar="FILE", help="a client certificate for Redis (mTLS)")
    _option(parser, "--redis-key-file", metavar="FILE", help="its key")
    _option(
        parser,
        "--redis-password-file",
        metavar="FILE",
        help="the Redis (ACL) password, kept out of the URL; also EXTPROC_REDIS_PASSWORD",
    )


def _redis_access(args: argparse.Namespace) -> RedisAccess:
    password = _read_secret(args.redis_password_file, "--redis-password-file") or _env("REDIS_PASSWORD")
    return RedisAccess(args.redis_ca_file, args.redis_cert_file, args.redis_key_file, password)


def _read_secret(path: str | None, flag: str) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as exc:
        raise UsageError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def _grpc_tls(args: argparse.Namespace) -> Any:
    from extproc.server.grpc import GrpcTls

    if not args.grpc_tls_cert and not args.grpc_tls_key:
        if args.grpc_client_ca:
            raise SystemExit("extproc: --grpc-client-ca needs --grpc-tls-cert and --grpc-tls-key")
        return None
    if not (args.grpc_tls_cert and args.grpc_tls_key):
        raise SystemExit("extproc: --grpc-tls-cert and --grpc-tls-key go together")
    return GrpcTls(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_client_ca)


def _version() -> str:
    try:
        return importlib.metadata.version("extproc-budgets")
    except importlib.metadata.PackageNotFoundError:  # a source tree not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extproc", description="LLM spend budgets enforced at Envoy")
    parser.add_argument("--version", action="version", version=f"extproc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_proc sidecar")
    serve.add_argument(
        "--config",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATH",
        help="budget files or folders [env EXTPROC_CONFIG, PATH:PATH; default: examples/]",
    )
    serve.add_argument(
        "--catalog",
        action="append",
        default=None,
        metavar="FILE",
        help="a price catalog [env EXTPROC_CATALOG; default: none]",
    )
    _option(serve, "--redis-url", help="the shared spend store; without it spend is kept in memory")
    _redis_access_flags(serve)
    _option(serve, "--grpc-address", "0.0.0.0:50051", "the ext_proc listener (HOST:PORT or unix:PATH)")
    _option(serve, "--admin-address", "0.0.0.0:9090", "metrics, health, /spend")
    _option(
        serve, "--workers", 1, "processes sharing the gRPC port (one per core; needs --redis-url)", type=int
    )
    _option(
        serve,
        "--store-timeout-ms",
        100,
        "deadline of each spend-store call; keep well inside Envoy's message_timeout",
        type=int,
    )
    _option(serve, "--hold-lease-seconds", 300, "how long a crashed replica's holds outlive it", type=int)
    _switch(
        serve,
        "--read-response-headers",
        "have Envoy send response headers too (4 blocking messages a request, not 3): "
        "brotli is then offered upstream and decoded (the body alone does not show it)",
    )
    _option(
        serve,
        "--journal-dir",
        metavar="DIR",
        help="with --redis-url: keep spend not yet confirmed by Redis here, replayed after a restart",
    )
    _option(
        serve,
        "--journal-fsync",
        "everysec",
        "everysec: a killed process loses nothing, power loss up to 1 s; always: nothing, an fsync each",
        choices=["always", "everysec"],
    )
    _option(serve, "--journal-max-mb", 256, "the journal's size cap", type=int, metavar="MB")
    _option(
        serve,
        "--drain-delay-seconds",
        5.0,
        "on SIGTERM, keep taking new streams this long while endpoints propagate (0 with a preStop)",
        type=float,
        metavar="S",
    )
    _option(
        serve,
        "--drain-seconds",
        300.0,
        "then let in-flight streams finish for up to this long; a second SIGTERM cuts it short",
        type=float,
        metavar="S",
    )
    _option(serve, "--grpc-tls-cert", metavar="FILE", help="serve gRPC over TLS with this certificate")
    _option(serve, "--grpc-tls-key", metavar="FILE", help="and this key")
    _option(
        serve,
        "--grpc-client-ca",
        metavar="FILE",
        help="require client certificates signed by this CA (mTLS); files reload when they change",
    )
    _option(
        serve,
        "--admin-token-file",
        metavar="FILE",
        help="a bearer token /spend and the BudgetAdmin gRPC API need (/metrics and health stay open)",
    )
    _switch(
        serve,
        "--admin-adjust",
        "allow BudgetAdmin/AdjustSpend (credit or reset a counter, with a reason; logged), behind the"
        " admin token (or loopback peers without one)",
    )
    _option(
        serve,
        "--budget-gauges-interval",
        15.0,
        "read spend for the per-budget gauges (extproc_budget_*) this often; 0: no such gauges",
        type=float,
        metavar="S",
    )
    _option(
        serve,
        "--budget-gauges-max-series",
        1000,
        "entry and subject pairs the gauges export at most (the rest: extproc_budget_series_dropped)",
        type=int,
        metavar="N",
    )
    serve.add_argument(
        "--notify-webhook",
        action="append",
        default=None,
        metavar="URL",
        help="send threshold crossings here as signed JSON (repeatable)"
        " [env EXTPROC_NOTIFY_WEBHOOKS, URL,URL; default: none]",
    )
    serve.add_argument(
        "--notify-slack-webhook",
        action="append",
        default=None,
        metavar="URL",
        help="send them to a Slack incoming webhook (repeatable)"
        " [env EXTPROC_NOTIFY_SLACK_WEBHOOKS, URL,URL; default: none]",
    )
    _option(
        serve,
        "--notify-hmac-key-file",
        metavar="FILE",
        help="sign the JSON webhooks' bodies with this key (X-Extproc-Signature: sha256=HMAC)",
    )
    _option(
        serve,
        "--notify-thresholds",
        "50,80,100",
        "percentages of a limit whose crossing is notified, once per window",
        type=_thresholds,
        metavar="P,P,...",
    )
    _option(serve, "--log-level", "info", f"one of {', '.join(LOG_LEVELS)}", type=_log_level)
    _option(
        serve,
        "--reload-interval",
        1.0,
        "how often to look for configuration changes and apply them; 0 disables reloading",
        type=float,
        metavar="SECONDS",
    )
    _option(
        serve,
        "--source",
        "files",
        "files: --config paths (mounted ConfigMaps too); kubernetes: list and watch the cluster",
        choices=["files", "kubernetes"],
    )
    _option(
        serve,
        "--kubeconfig",
        env="KUBECONFIG_FILE",
        metavar="FILE",
        shown="the pod's service account",
        help="with --source kubernetes: a kubeconfig",
    )
    serve.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        metavar="NS",
        help="with --source kubernetes: watch only this namespace (repeatable; namespace-scoped RBAC)"
        " [env EXTPROC_NAMESPACES, NS:NS; default: all]",
    )
    _option(
        serve,
        "--lease-namespace",
        metavar="NS",
        shown="the pod's namespace",
        help="where the status-writer Lease lives",
    )
    serve.add_argument(
        "--no-status",
        dest="write_status",
        action="store_false",
        default=(_env("WRITE_STATUS", "true") or "true").lower() not in ("0", "false", "no"),
        help="with --source kubernetes: do not write status (another controller owns it)"
        " [env EXTPROC_WRITE_STATUS=false; default: status written]",
    )

    check = sub.add_parser("check", help="validate configuration files")
    check.add_argument("paths", nargs="+")
    check.add_argument("--catalog", action="append", default=[], metavar="FILE", help="a price catalog")

    price = sub.add_parser("price", help="the cost in USD the sidecar would record, and its parts")
    price.add_argument("--model", required=True)
    price.add_argument("--provider", default=None, help="the catalog provider (openai, anthropic, aws, ...)")
    price.add_argument(
        "--input-tokens",
        "--input",
        dest="input",
        type=_count,
        required=True,
        help="all input tokens, cached included",
    )
    price.add_argument(
        "--output-tokens", dest="output_tokens", type=_count, help="all output tokens, reasoning included"
    )
    price.add_argument("--cached-input", type=_count, default=0, help="input tokens read from the cache")
    price.add_argument("--cache-write", type=_count, default=0, help="input tokens written to the cache")
    price.add_argument("--reasoning", type=_count, default=0, help="output tokens spent reasoning")
    price.add_argument("--config", nargs="+", action="extend", default=[], metavar="PATH")
    price.add_argument("--catalog", action="append", default=[], metavar="FILE", help="a price catalog")
    price.add_argument(
        "--output",
        default="text",
        metavar="text|json",
        help="text, or json for tools; a number here is the output tokens (the older spelling)",
    )

    spend = sub.add_parser("spend", help="spend, limit, remaining and reset of each budget entry")
    spend.add_argument("--config", nargs="+", action="extend", default=[], metavar="PATH")
    spend.add_argument(
        "--sidecar",
        metavar="URL",
        help="ask a running sidecar's admin address (e.g. http://127.0.0.1:9090) instead of reading a store",
    )
    spend.add_argument("--catalog", action="append", default=[], metavar="FILE", help="a price catalog")
    _option(spend, "--redis-url", help="the spend store the sidecars share")
    _redis_access_flags(spend)
    spend.add_argument(
        "--output", choices=["table", "json"], default="table", help="json: one object per row"
    )
    return parser


def _thresholds(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not percentages like 50,80,100") from None
    if not values or any(not 0 < v <= 1000 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each percentage is 1 to 1000")
    return values


def _webhooks(args: argparse.Namespace) -> tuple[Any, ...]:
    from extproc.notify import Webhook

    key = _read_secret(args.notify_hmac_key_file, "--notify-hmac-key-file")
    plain = args.notify_webhook or [u for u in (_env("NOTIFY_WEBHOOKS") or "").split(",") if u.strip()]
    slack = args.notify_slack_webhook or [
        u for u in (_env("NOTIFY_SLACK_WEBHOOKS") or "").split(",") if u.strip()
    ]
    hooks = [Webhook(u.strip(), "json", key.encode() if key else None) for u in plain]
    hooks += [Webhook(u.strip(), "slack") for u in slack]
    for hook in hooks:
        if not hook.url.startswith(("http://", "https://")):
            raise UsageError(f"a webhook URL starts with http:// or https://, not {hook.url!r}")
    return tuple(hooks)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: token counts are 0 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check":
            return _check(args)
        if args.command == "price":
            return _price(args)
        return _spend(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"extproc {args.command}: {exc}", file=sys.stderr)
        return 2
    except SpendUnavailable as exc:
        print(f"extproc {args.command}: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from extproc.admission import Settings
    from extproc.app import ServeOptions, run
    from extproc.config.sources.kubernetes.options import ClusterOptions

    opts = ServeOptions(
        config_paths=args.config or _env_list("CONFIG") or ["examples/"],
        catalog_files=args.catalog or _env_list("CATALOG"),
        redis_url=args.redis_url or None,
        grpc_address=args.grpc_address,
        admin_address=args.admin_address,
        workers=args.workers,
        store_timeout_ms=args.store_timeout_ms,
        log_level=args.log_level,
        reload_interval=args.reload_interval,
        settings=Settings(
            hold_lease_seconds=args.hold_lease_seconds, read_response_headers=args.read_response_headers
        ),
        source=args.source,
        journal_dir=args.journal_dir,
        journal_fsync=args.journal_fsync,
        journal_max_bytes=args.journal_max_mb * 1024 * 1024,
        redis_access=_redis_access(args),
        grpc_tls=_grpc_tls(args),
        admin_token=_read_secret(args.admin_token_file, "--admin-token-file"),
        admin_adjust=args.admin_adjust,
        budget_gauges_interval=args.budget_gauges_interval,
        budget_gauges_max_series=args.budget_gauges_max_series,
        notify_webhooks=_webhooks(args),
        notify_thresholds=args.notify_thresholds,
        drain_delay_seconds=args.drain_delay_seconds,
        drain_seconds=args.drain_seconds,
        cluster=ClusterOptions(
            kubeconfig=args.kubeconfig,
            namespaces=tuple(args.namespaces or _env_list("NAMESPACES")),
            lease_namespace=args.lease_namespace,
            write_status=args.write_status,
        ),
    )
    # Fail fast with file:line problems before binding anything.
    if opts.source == "files":
        load_config(opts.config_paths, opts.catalog_files)
    else:
        load_config([], opts.catalog_files)
    return run(opts)


def _check(args: argparse.Namespace) -> int:
    from extproc.budgets import reach

    config = load_config(args.paths, args.catalog)
    for warning in reach(config).warnings():
        print(f"warning: {warning}", file=sys.stderr)
    entries = sum(len(b.entries) for b in config.budgets)
    print(
        f"ok: {len(config.sources)} files, {len(config.budgets)} budgets ({entries} entries), "
        f"{len(config.policies)} policies, {len(config.catalogs)} catalogs"
    )
    return 0


class UsageError(Exception):
    """A command given what it cannot use: one line on stderr, exit 2."""


def _price(args: argparse.Namespace) -> int:
    from extproc.catalog import Catalog, components_text, format_usd
    from extproc.usage import Usage

    output, fmt = args.output_tokens, args.output
    if fmt.isdigit():  # `--output 683`, as before the json output
        output, fmt = (int(fmt) if output is None else output), "text"
    if fmt not in ("text", "json"):
        raise UsageError(f"--output is text or json (or the output tokens), not {fmt!r}")
    if output is None:
        raise UsageError("give the output tokens: --output-tokens N")
    if args.cached_input + args.cache_write > args.input:
        raise UsageError(
            f"cached ({args.cached_input}) and cache-write ({args.cache_write}) tokens are part of"
            f" the input, so at most --input ({args.input})"
        )
    if args.reasoning > output:
        raise UsageError(f"reasoning tokens ({args.reasoning}) are part of the output ({output})")
    config = load_config(args.config, args.catalog) if (args.config or args.catalog) else None
    catalog = Catalog(config.catalogs if config else ())
    if args.provider and not catalog.knows_provider(args.provider):
        raise UsageError(f"unknown provider {args.provider!r}: not in your catalogs nor in genai-prices")
    usage = Usage(
        input_tokens=args.input,
        output_tokens=output,
        cached_input_tokens=args.cached_input,
        cache_creation_input_tokens=args.cache_write,
        reasoning_tokens=args.reasoning,
    )
    price = catalog.price(usage, args.model, args.provider)
    known = price.status.value not in ("unpriced", "missing")
    source = {"exact": "your catalog", "builtin": "genai-prices"}.get(price.status.value, "nowhere")
    if fmt == "json":
        print(
            json.dumps(
                {
                    "cost_usd": format_usd(price.usd),
                    "components": components_text(price),
                    "source": price.status.value,
                    "provider": price.provider,
                    "model": price.model,
                },
                indent=2,
            )
        )
    elif known:
        print(format_usd(price.usd))
        for name, amount in components_text(price).items():
            print(f"  {name:<13}{amount}")
        print(f"source: {source} ({price.provider}/{price.model})")
    if not known:
        print(
            f"extproc price: {args.model}: not in any catalog ({price.status.value}); the sidecar"
            " would price it at $0 (add it to a catalog: --catalog FILE)",
            file=sys.stderr,
        )
        return 1
    return 0


def _spend(args: argparse.Namespace) -> int:
    from extproc.spend import HEADER, fetch_rows, spend_table

    if args.sidecar:
        rows = fetch_rows(args.sidecar)
    elif args.config and args.redis_url:
        config = load_config(args.config, args.catalog)
        rows = asyncio.run(spend_table(config, args.redis_url, time.time(), _redis_access(args)))
    elif args.config:
        raise UsageError(
            "spend lives in the sidecars' store: pass --redis-url URL (the one they share) or"
            " --sidecar http://HOST:9090 (a running sidecar, its in-memory store included)"
        )
    else:
        raise UsageError("give --config PATH... with --redis-url URL, or --sidecar URL")
    if args.output == "json":
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return 0
    table = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(HEADER))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
