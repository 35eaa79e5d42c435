"""`sixshop-agent`: serve, migrate, ingest, keys, purge, capacity, eval."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from server.logs import configure_logging
from server.settings import Settings, load_settings


def _serve(settings: Settings, host: str, port: int, workers: int) -> int:
    import uvicorn

    common: dict[str, object] = {
        "host": host, "port": port,
        "log_config": None,  # ours (configure_logging) stays in charge
        "access_log": settings.app_env != "production",
        # SIGTERM: running turns get this long to finish (server/shutdown.py drains first)
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
    if workers > 1:
        # each worker is a full process (its own pool, background jobs claimed in background_jobs), like
        # several containers on one database; settings come from the environment in each
        uvicorn.run("server.http.app:create_app", factory=True, workers=workers, **common)  # type: ignore[arg-type]
        return 0
    from server.http.app import create_app

    uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
    return 0


async def _check_database(settings: Settings) -> None:
    from server.preflight import listen_conninfo
    from server.resources import ensure_schema, open_database

    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        await listen_conninfo(settings, pool)


async def _migrate(settings: Settings) -> int:
    from server.preflight import migrate_schema
    from server.resources import open_database

    async with open_database(settings, direct=True) as (pool, _):
        applied = await migrate_schema(pool)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


async def _prepare(settings: Settings) -> int:
    """What `serve` does to the database at start: migrations, then the sample knowledge base if the index
    is empty (INGEST_SAMPLE_IF_EMPTY). Studio's graph runs it before its first retrieval."""
    from server.resources import ensure_schema, open_database, prepare_knowledge

    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        knowledge = await prepare_knowledge(settings, pool)
        await knowledge.aclose()
    print(knowledge.backend)
    return 0


async def _ingest(settings: Settings, path: Path, store_id: str | None, source: str | None, prune: bool) -> int:
    from server.integrations.ingest import ingest_path
    from server.integrations.knowledge import build_knowledge
    from server.integrations.progress import default_progress
    from server.resources import ensure_schema, open_database

    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        knowledge = await build_knowledge(settings, pool)
        try:
            report = await ingest_path(knowledge.indexer, path, source=source, store_id=store_id, prune=prune,
                                       progress=default_progress("ingest", "documents to write"))
        finally:
            await knowledge.aclose()
    print(f"{knowledge.backend}: {report.summary()}")
    return 0


async def _ingest_notion(settings: Settings, database_id: str | None) -> int:
    from server.integrations.knowledge import build_knowledge
    from server.integrations.notion import NotionReader, ingest_notion, make_client
    from server.integrations.progress import default_progress
    from server.resources import ensure_schema, open_database

    database_id = database_id or settings.notion_database_id
    if settings.notion_integration_token is None or not database_id:
        print("error: set NOTION_INTEGRATION_TOKEN and NOTION_DATABASE_ID (or pass --database-id)", file=sys.stderr)
        return 2
    client = make_client(settings.notion_integration_token.get_secret_value(), base_url=settings.notion_base_url)
    reader = NotionReader(client, database_id, store_property=settings.notion_store_property,
                          audience_property=settings.notion_audience_property)
    async with open_database(settings) as (pool, _), client:
        await ensure_schema(settings, pool)
        knowledge = await build_knowledge(settings, pool)
        try:
            report = await ingest_notion(knowledge.indexer, reader, progress=default_progress(),
                                         concurrency=settings.notion_concurrency)
        finally:
            await knowledge.aclose()
    for doc_id, reason in report.failures:
        print(f"failed: {doc_id}: {reason}", file=sys.stderr)
    print(f"{knowledge.backend}: {report.summary('pages')}")
    return 1 if report.failed else 0


async def _operators(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from persistence.operators import OperatorRepository
    from server.resources import ensure_schema, open_database
    from server.services.operators import OperatorAccounts

    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        repo = OperatorRepository(pool)
        if args.operators_command == "create":
            accounts = OperatorAccounts(repo, session_lifetime=timedelta(hours=settings.operator_session_hours))
            password = await accounts.create(args.email, args.stores)
            print(f"created operator {args.email} for {', '.join(sorted(set(args.stores)))}; their one-time "
                  "password is shown once, here:", file=sys.stderr)
            print(password)
            return 0
        if args.operators_command == "list":
            for r in await repo.all():
                state = f"disabled {r['disabled_at']:%Y-%m-%d}" if r["disabled_at"] else "active"
                print(f"{r['email']:<32} {state:<20} {', '.join(r['stores'])}")
            return 0
        if not await repo.disable(args.email):
            print(f"error: no active operator {args.email!r}", file=sys.stderr)
            return 2
        print(f"disabled {args.email}; their sign-ins have ended")
        return 0


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from persistence.keys import KeyRepository
    from server.resources import ensure_schema, open_database

    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        repo = KeyRepository(pool)
        if args.keys_command == "create":
            if (args.store_id is None) == (not args.admin) or (args.publishable and args.admin):
                print("error: give --store ID (with --publishable for a browser's key), or --admin for a key to "
                      "every store", file=sys.stderr)
                return 2
            key, row = await repo.create(store_id=args.store_id, name=args.name,
                                         turns_per_minute=args.turns_per_minute, publishable=args.publishable)
            scope = f"store {row['store_id']}" if row["store_id"] else "admin (every store)"
            if args.publishable:
                scope = f"publishable, store {row['store_id']}: it may be public; set the store's allowed_origins"
            print(f"created key {row['key_id']} ({scope}); it is shown once, here:", file=sys.stderr)
            print(key)
            return 0
        if args.keys_command == "list":
            for r in await repo.all():
                state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
                used = f"{r['last_used_at']:%Y-%m-%d %H:%M}" if r["last_used_at"] else "never"
                limit = r["turns_per_minute"] if r["turns_per_minute"] is not None else "default"
                kind = " publishable" if r["kind"] == "publishable" else ""
                print(f"{r['key_id']}  {r['prefix']}…{kind}  {r['store_id'] or '*admin*':<20} {state:<18} "
                      f"used {used:<16} turns/min {limit}  {r['name'] or ''}")
            return 0
        revoked = await repo.revoke(args.ref)
        if not revoked:
            print(f"error: no active key with id or prefix {args.ref!r}", file=sys.stderr)
            return 2
        for r in revoked:
            print(f"revoked {r['key_id']} ({r['prefix']}…)")
        return 0


async def _purge(settings: Settings, dry_run: bool) -> int:
    from server.resources import ensure_schema, open_database
    from server.services.lifecycle import run_purge

    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        report = await run_purge(pool, settings, dry_run)
    print(report.summary())
    return 0


async def _eval(settings: Settings, args: argparse.Namespace) -> int:
    """Every case of the evaluation set through the graph, per prompt variant (server/integrations/evaluation.py)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from graph.graph import build_graph
    from graph.models import model_label
    from graph.prompts import VariantPicker
    from graph.state import ChatContext
    from server.integrations.evaluation import Case, evaluate_variants, leg_figures, load_cases, retrieval_legs
    from server.preflight import StartupError
    from server.resources import chat_model, ensure_schema, open_database, prepare_knowledge

    cases = load_cases(Path(args.dataset)) if args.dataset else load_cases()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else list(
        VariantPicker.parse(settings.prompt_variant).weights)
    VariantPicker({v: 1.0 for v in variants})  # unknown names: ValueError, a one-line error below
    knowledge_dir = Path(args.knowledge) if args.knowledge else None
    if knowledge_dir is not None:
        # another help centre, alone in an index of its own: a throwaway embedded PostgreSQL, so that no page of the
        # sample (or of anything ingested before) answers its questions
        if not settings.uses_embedded_db:
            raise StartupError("--knowledge evaluates on a throwaway embedded PostgreSQL: unset DATABASE_URL")
        if not knowledge_dir.is_dir():
            raise StartupError(f"--knowledge: no such folder: {knowledge_dir}")
        scratch = Path(tempfile.mkdtemp(prefix="sixshop-eval-pg-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        settings = settings.model_copy(update={"knowledge_dir": knowledge_dir.resolve(),
                                               "embedded_pg_dir": scratch / "data", "ingest_sample_if_empty": True})
    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        knowledge = await prepare_knowledge(settings, pool)
        model = chat_model(settings)
        graph = build_graph(InMemorySaver())  # the service's nodes; threads of the eval are not kept

        def context(variant: str, case: Case) -> ChatContext:
            return ChatContext(store_id="eval", audience=case.audience, model=model, retriever=knowledge.retriever,
                               k=max(settings.retrieval_k, args.k), history_messages=settings.history_messages,
                               prompt_variant=variant, min_similarity=knowledge.min_similarity)

        experiments: list[str] = []
        try:
            if settings.tracing_enabled and not args.local:
                reports, experiments = await _eval_in_langsmith(settings, args, graph, cases, variants, context,
                                                                model_label(model), knowledge.backend)
            else:
                reports = await evaluate_variants(graph, cases, variants, args.k, context)
            # each ranking alone on what the first variant's turns searched for (the search does not depend on it)
            legs = await leg_figures(retrieval_legs(knowledge.retriever), reports[0].results, k=args.k,
                                     store_id="eval")
        finally:
            await knowledge.aclose()
    figures = [r.figures() for r in reports]
    if args.json:
        print(json.dumps({"dataset": args.dataset or "knowledge/eval/cases.json", "cases": len(cases),
                          "knowledge": str(knowledge_dir or settings.knowledge_dir),
                          "model": model_label(model), "retriever": knowledge.backend, "k": args.k,
                          "variants": figures, "retrieval_legs": legs, "langsmith_experiments": experiments},
                         indent=2))
        return 0
    print(f"{len(cases)} cases, model {model_label(model)}, retriever {knowledge.backend}, k={args.k}")
    if experiments:
        print("LangSmith experiments (compare them side by side on the dataset): " + ", ".join(experiments))
    keys = [key for key in figures[0] if key not in ("variant", "cases")]
    print(f"{'':<34}" + "".join(f"{f['variant']:>10}" for f in figures))
    for key in keys:
        print(f"{key:<34}" + "".join(f"{f[key]:>10}" for f in figures))
    print(f"\nretrieval alone, per ranking (answerable cases, as searched):\n{'':<34}"
          + "".join(f"{key:>10}" for key in next(iter(legs.values()))))
    for name, row in legs.items():
        print(f"{name:<34}" + "".join(f"{value:>10}" for value in row.values()))
    if args.misses:
        for report in reports:
            print(f"\nmisses of {report.variant}:")
            for line in report.misses():
                print("  " + line)
    return 0


def _revision() -> str:
    """The checkout's git revision (experiments are named by it), or "unversioned" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return "unversioned"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unversioned"


async def _eval_in_langsmith(settings: Settings, args: argparse.Namespace, graph: Any, cases: list[Any],
                             variants: list[str], context: Any, model: str, retriever: str) -> tuple[Any, Any]:
    """The variants as LangSmith experiments on the set's dataset (uploaded once per content), with openevals'
    correctness judge when there is an OpenAI key."""
    from langsmith import Client

    from server.integrations.evaluation import dataset_name, evaluate_in_langsmith

    client = Client(api_url=settings.langsmith_endpoint,
                    api_key=settings.langsmith_api_key.get_secret_value() if settings.langsmith_api_key else None)
    judge = None
    if settings.openai_api_key is not None:
        from langchain_openai import ChatOpenAI

        judge = ChatOpenAI(model=settings.openai_model, api_key=settings.openai_api_key,
                           base_url=settings.openai_base_url, temperature=0, max_retries=settings.openai_max_retries)
    path = Path(args.dataset) if args.dataset else None
    name = dataset_name(path) if path else dataset_name()
    try:
        # langsmith prints where to view each experiment: on stderr, so that stdout stays the report (--json)
        with contextlib.redirect_stdout(sys.stderr):
            return await evaluate_in_langsmith(client, graph, cases, variants, args.k, context, name=name,
                                               revision=_revision(), judge=judge,
                                               metadata={"model": model, "retriever": retriever, "k": args.k})
    finally:
        await asyncio.to_thread(client.flush)


async def _capacity(settings: Settings, as_json: bool) -> int:
    import json

    from server.resources import ensure_schema, make_capacity, open_database
    from server.services.capacity import render

    async with open_database(settings) as (pool, _):
        await ensure_schema(settings, pool)
        capacity = make_capacity(settings, pool)
        await capacity.sample()  # now counts too, with this process's own connection
        report = await capacity.report()
    print(json.dumps(report, indent=2, default=str) if as_json else render(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sixshop-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/SSE service")
    serve.add_argument("--host", default=None, help="bind address (default HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default PORT or 8000)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default WEB_CONCURRENCY or 1)")
    sub.add_parser("migrate", help="apply sql/ migrations and the LangGraph checkpoint tables")
    sub.add_parser("prepare", help="migrate, then index the sample knowledge base if the index is empty "
                                   "(what serve does at start)")
    ingest = sub.add_parser(
        "ingest", help="index the Notion database (`ingest notion`) or a folder/file of Markdown/text (`ingest PATH`)"
    )
    ingest.add_argument("path", metavar="notion|PATH",
                        help="`notion` for NOTION_DATABASE_ID (a local folder named notion: write ./notion)")
    ingest.add_argument("--database-id", default=None, help="Notion database id (default NOTION_DATABASE_ID)")
    ingest.add_argument("--store", dest="store_id", default=None, help="make the passages private to this store")
    ingest.add_argument("--source", default=None, help="source name (default files:<folder name>)")
    ingest.add_argument("--no-prune", dest="prune", action="store_false",
                        help="keep documents of this source that are no longer in PATH")
    keys = sub.add_parser("keys", help="API keys: create (shown once), list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="a new key for one store (or --admin); printed once")
    create.add_argument("--store", dest="store_id", default=None)
    create.add_argument("--admin", action="store_true", help="a key for every store and the admin API")
    create.add_argument("--publishable", action="store_true",
                        help="a pk-sixshop- key for a store's web page: it may be public, and can only read the "
                             "widget's configuration and open sessions, from the store's allowed_origins")
    create.add_argument("--name", default=None, help="a note to recognise the key by")
    create.add_argument("--turns-per-minute", type=int, default=None, help="this key's rate limit (0: none)")
    keys_sub.add_parser("list", help="every key (never the key itself)")
    revoke = keys_sub.add_parser("revoke", help="revoke by key id or prefix")
    revoke.add_argument("ref", help="key id, or the prefix shown by list")
    operators = sub.add_parser("operators", help="operators' accounts for /admin: create (prints a one-time "
                                                 "password), list, disable")
    operators_sub = operators.add_subparsers(dest="operators_command", required=True)
    op_create = operators_sub.add_parser("create", help="an account for one or more stores")
    op_create.add_argument("--store", dest="stores", action="append", required=True, help="repeat for several")
    op_create.add_argument("--email", required=True)
    operators_sub.add_parser("list", help="every operator and their stores")
    op_disable = operators_sub.add_parser("disable", help="disable an account and end its sign-ins")
    op_disable.add_argument("--email", required=True)
    purge = sub.add_parser("purge", help="expire idle sessions and delete old ones with their messages and "
                                         "checkpoints (what the service does every SESSION_CLEANUP_INTERVAL_MINUTES)")
    purge.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    capacity = sub.add_parser("capacity", help="connections, sessions a month, latency and table sizes against "
                                                "the thresholds for Aurora or Redis")
    capacity.add_argument("--json", action="store_true", help="the report as JSON (as GET /api/admin/capacity)")
    evaluate = sub.add_parser("eval", help="run the evaluation set through the graph per prompt variant: retrieval "
                                           "hit@k and MRR, facts in the answer, citation, abstention, latency")
    evaluate.add_argument("--dataset", help="cases JSON (default knowledge/eval/cases.json)")
    evaluate.add_argument("--variants", help="prompt variants, comma-separated (default: PROMPT_VARIANT's)")
    evaluate.add_argument("--k", type=int, default=3, help="hit@k cut-off (default 3)")
    evaluate.add_argument("--json", action="store_true", help="the figures as JSON")
    evaluate.add_argument("--misses", action="store_true", help="list the cases each variant got wrong")
    evaluate.add_argument("--knowledge", help="another help centre's folder (e.g. knowledge/electronics), indexed "
                                             "alone in a throwaway embedded PostgreSQL; pages in --dataset are "
                                             "relative to it")
    evaluate.add_argument("--local", action="store_true",
                          help="do not upload to LangSmith even when it is configured (LANGSMITH_API_KEY)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from server.preflight import StartupError

    args = build_parser().parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, json_lines=settings.app_env == "production")
    try:
        return _run(args, settings)
    except StartupError as exc:  # one line that names the setting; no stack trace
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from server.resources import session_token_secrets

        session_token_secrets(settings)  # production without SESSION_TOKEN_SECRET stops here, in one line
        if not settings.uses_embedded_db:  # fail here, in one line, rather than inside the ASGI lifespan
            asyncio.run(_check_database(settings))
        return _serve(settings, args.host or settings.host, args.port or settings.port,
                      args.workers or settings.web_concurrency)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "prepare":
        return asyncio.run(_prepare(settings))
    if args.command == "keys":
        return asyncio.run(_keys(settings, args))
    if args.command == "operators":
        return asyncio.run(_operators(settings, args))
    if args.command == "purge":
        return asyncio.run(_purge(settings, args.dry_run))
    if args.command == "eval":
        try:
            return asyncio.run(_eval(settings, args))
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "capacity":
        return asyncio.run(_capacity(settings, args.json))
    if args.command == "ingest" and args.path == "notion":
        return asyncio.run(_ingest_notion(settings, args.database_id))
    if args.command == "ingest":
        try:
            return asyncio.run(_ingest(settings, Path(args.path), args.store_id, args.source, args.prune))
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
