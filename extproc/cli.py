"""The `extproc` command: serve, check, price, spend.

Every `serve` flag can also come from the environment as EXTPROC_<FLAG> (upper case,
dashes as underscores); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from extproc.config import ConfigError, load_config
from extproc.store.connect import RedisAccess


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EXTPROC_{name}", default)


def _env_list(name: str) -> list[str]:
    raw = _env(name)
    return [p for p in raw.replace(",", ":").split(":") if p] if raw else []


def _redis_access_flags(parser: argparse.ArgumentParser) -> None:
    """TLS files and a password for --redis-url (rediss://, redis+sentinel://, ACL users)."""
    parser.add_argument("--redis-ca-file", default=_env("REDIS_CA_FILE"), metavar="FILE")
    parser.add_argument("--redis-cert-file", default=_env("REDIS_CERT_FILE"), metavar="FILE")
    parser.add_argument("--redis-key-file", default=_env("REDIS_KEY_FILE"), metavar="FILE")
    parser.add_argument(
        "--redis-password-file",
        default=_env("REDIS_PASSWORD_FILE"),
        metavar="FILE",
        help="the Redis (ACL) password, kept out of the URL; also EXTPROC_REDIS_PASSWORD",
    )


def _redis_access(args: argparse.Namespace) -> RedisAccess:
    password = _env("REDIS_PASSWORD")
    if args.redis_password_file:
        with open(args.redis_password_file, encoding="utf-8") as f:
            password = f.read().strip()
    return RedisAccess(args.redis_ca_file, args.redis_cert_file, args.redis_key_file, password)


def _read_secret(path: str | None) -> str | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


def _grpc_tls(args: argparse.Namespace) -> Any:
    from extproc.server.grpc import GrpcTls

    if not args.grpc_tls_cert and not args.grpc_tls_key:
        if args.grpc_client_ca:
            raise SystemExit("extproc: --grpc-client-ca needs --grpc-tls-cert and --grpc-tls-key")
        return None
    if not (args.grpc_tls_cert and args.grpc_tls_key):
        raise SystemExit("extproc: --grpc-tls-cert and --grpc-tls-key go together")
    return GrpcTls(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_client_ca)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extproc", description="LLM spend budgets enforced at Envoy")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ext_proc sidecar")
    serve.add_argument("--config", nargs="+", action="extend", default=None, metavar="PATH")
    serve.add_argument("--catalog", action="append", default=None, metavar="FILE")
    serve.add_argument("--redis-url", default=_env("REDIS_URL"))
    _redis_access_flags(serve)
    serve.add_argument("--grpc-address", default=_env("GRPC_ADDRESS", "0.0.0.0:50051"))
    serve.add_argument("--admin-address", default=_env("ADMIN_ADDRESS", "0.0.0.0:9090"))
    serve.add_argument("--workers", type=int, default=int(_env("WORKERS", "1") or 1))
    serve.add_argument(
        "--store-timeout-ms",
        type=int,
        default=int(_env("STORE_TIMEOUT_MS", "100") or 100),
        help="deadline of each spend-store call; keep well inside Envoy's message_timeout",
    )
    serve.add_argument(
        "--hold-lease-seconds", type=int, default=int(_env("HOLD_LEASE_SECONDS", "300") or 300)
    )
    serve.add_argument(
        "--read-response-headers",
        action="store_true",
        default=(_env("READ_RESPONSE_HEADERS", "false") or "false").lower() in ("1", "true", "yes"),
        help="have Envoy send response headers too (4 blocking messages a request, not 3): "
        "brotli is then offered upstream and decoded (the body alone does not show it)",
    )
    serve.add_argument(
        "--journal-dir",
        default=_env("JOURNAL_DIR"),
        metavar="DIR",
        help="with --redis-url: keep spend not yet confirmed by Redis here, replayed after a restart",
    )
    serve.add_argument(
        "--journal-fsync",
        choices=["always", "everysec"],
        default=_env("JOURNAL_FSYNC", "everysec"),
        help="everysec: a killed process loses nothing, power loss up to 1 s; always: nothing, an fsync each",
    )
    serve.add_argument(
        "--journal-max-mb", type=int, default=int(_env("JOURNAL_MAX_MB", "256") or 256), metavar="MB"
    )
    serve.add_argument(
        "--drain-delay-seconds",
        type=float,
        default=float(_env("DRAIN_DELAY_SECONDS", "5") or 5),
        metavar="S",
        help="on SIGTERM, keep taking new streams this long while endpoints propagate (0 with a preStop)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=float(_env("DRAIN_SECONDS", "300") or 300),
        metavar="S",
        help="then let in-flight streams finish for up to this long; a second SIGTERM cuts it short",
    )
    serve.add_argument("--grpc-tls-cert", default=_env("GRPC_TLS_CERT"), metavar="FILE")
    serve.add_argument("--grpc-tls-key", default=_env("GRPC_TLS_KEY"), metavar="FILE")
    serve.add_argument(
        "--grpc-client-ca",
        default=_env("GRPC_CLIENT_CA"),
        metavar="FILE",
        help="require client certificates signed by this CA (mTLS); files reload when they change",
    )
    serve.add_argument(
        "--admin-token-file",
        default=_env("ADMIN_TOKEN_FILE"),
        metavar="FILE",
        help="a bearer token /spend needs (/metrics and health stay open)",
    )
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=float(_env("RELOAD_INTERVAL", "1.0") or 1.0),
        metavar="SECONDS",
        help="how often to look for configuration changes and apply them; 0 disables reloading",
    )

    serve.add_argument(
        "--source",
        choices=["files", "kubernetes"],
        default=_env("SOURCE", "files"),
        help="files: --config paths (mounted ConfigMaps too); kubernetes: list and watch the cluster",
    )
    serve.add_argument(
        "--kubeconfig",
        default=_env("KUBECONFIG_FILE"),
        metavar="FILE",
        help="with --source kubernetes: a kubeconfig; default: the pod's service account",
    )
    serve.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        metavar="NS",
        help="with --source kubernetes: watch only this namespace (repeatable; namespace-scoped RBAC)",
    )
    serve.add_argument(
        "--lease-namespace",
        default=_env("LEASE_NAMESPACE"),
        metavar="NS",
        help="where the status-writer Lease lives; default: the pod's namespace",
    )
    serve.add_argument(
        "--no-status",
        dest="write_status",
        action="store_false",
        default=(_env("WRITE_STATUS", "true") or "true").lower() not in ("0", "false", "no"),
        help="with --source kubernetes: do not write status (another controller owns it)",
    )

    check = sub.add_parser("check", help="validate configuration files")
    check.add_argument("paths", nargs="+")
    check.add_argument("--catalog", action="append", default=[], metavar="FILE")

    price = sub.add_parser("price", help="the cost in USD the sidecar would record")
    price.add_argument("--model", required=True)
    price.add_argument("--provider", default=None)
    price.add_argument("--input", type=int, required=True, help="all input tokens, cached included")
    price.add_argument("--output", type=int, required=True)
    price.add_argument("--cached-input", type=int, default=0)
    price.add_argument("--cache-write", type=int, default=0)
    price.add_argument("--reasoning", type=int, default=0)
    price.add_argument("--config", nargs="+", action="extend", default=[], metavar="PATH")
    price.add_argument("--catalog", action="append", default=[], metavar="FILE")

    spend = sub.add_parser("spend", help="spend, limit, remaining and reset of each budget entry")
    spend.add_argument("--config", nargs="+", action="extend", default=[], metavar="PATH")
    spend.add_argument(
        "--sidecar",
        metavar="URL",
        help="ask a running sidecar's admin address (e.g. http://127.0.0.1:9090) instead of reading a store",
    )
    spend.add_argument("--catalog", action="append", default=[], metavar="FILE")
    spend.add_argument("--redis-url", default=_env("REDIS_URL"))
    _redis_access_flags(spend)
    spend.add_argument(
        "--output", choices=["table", "json"], default="table", help="json: one object per row"
    )
    return parser


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
        admin_token=_read_secret(args.admin_token_file),
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


def _price(args: argparse.Namespace) -> int:
    from extproc.catalog import Catalog, format_usd
    from extproc.usage import Usage

    config = load_config(args.config, args.catalog) if (args.config or args.catalog) else None
    catalog = Catalog(config.catalogs if config else ())
    usage = Usage(
        input_tokens=args.input,
        output_tokens=args.output,
        cached_input_tokens=args.cached_input,
        cache_creation_input_tokens=args.cache_write,
        reasoning_tokens=args.reasoning,
    )
    price = catalog.price(usage, args.model, args.provider)
    print(format_usd(price.usd))
    if price.status.value in ("unpriced", "missing"):
        print(
            f"warning: {args.model}: not in any catalog ({price.status.value}); priced at $0", file=sys.stderr
        )
    return 0


def _spend(args: argparse.Namespace) -> int:
    from extproc.spend import HEADER, fetch_rows, spend_table

    if args.sidecar:
        rows = fetch_rows(args.sidecar)
    elif args.config:
        config = load_config(args.config, args.catalog)
        rows = asyncio.run(spend_table(config, args.redis_url, time.time(), _redis_access(args)))
    else:
        print("extproc spend: give --config PATH... (with --redis-url) or --sidecar URL", file=sys.stderr)
        return 2
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
