"""The checkpointer exactly as the service configures it passes langgraph-checkpoint-conformance."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate

from persistence.checkpointer import make_checkpointer
from persistence.db import PoolConfig, open_pool
from persistence.migrations import migrate
from tests.conftest import create_database


async def test_service_checkpointer_conformance(pg_server_conninfo: str) -> None:
    @checkpointer_test(name="sixshop AsyncPostgresSaver (service pool and settings)")
    async def service_saver() -> AsyncGenerator[BaseCheckpointSaver, None]:
        # a fresh database per capability suite, set up by our own migrate() as `serve` does
        pool = await open_pool(PoolConfig(conninfo=create_database(pg_server_conninfo, "conformance"),
                                          min_size=1, max_size=4))
        try:
            await migrate(pool)
            yield make_checkpointer(pool)
        finally:
            await pool.close()

    report = await validate(service_saver)
    failures = {name: r.failures for name, r in report.results.items() if r.failures}
    assert report.passed_all_base(), failures
    assert report.results["prune"].detected and report.results["prune"].passed is True, failures
    assert report.passed_all(), failures  # every capability the saver has (copy_thread too) passes
    assert {n for n, r in report.results.items() if r.passed} >= {"put", "put_writes", "get_tuple", "list",
                                                                  "delete_thread", "prune"}


async def test_prune_in_one_statement_keeps_what_a_next_turn_is_saving(pg_server_conninfo: str) -> None:
    """The service's keep_latest (one statement per thread): older checkpoints, their writes and the blobs only
    they used go; a blob the next turn committed before its checkpoint stays, and so does a thread the
    statement does not take (a subgraph's namespace), which the stock prune does instead."""
    from langgraph.checkpoint.base import empty_checkpoint

    from persistence.checkpointer import PRUNE_ROOT_ONLY_SQL

    pool = await open_pool(PoolConfig(conninfo=create_database(pg_server_conninfo, "prune"), min_size=1, max_size=4))
    try:
        await migrate(pool)
        saver = make_checkpointer(pool)

        async def put(thread: str, step: int, values: dict[str, object], ns: str = "",
                      parent: dict | None = None, changed: tuple[str, ...] | None = None) -> dict:
            """A checkpoint of `values` at `step`: the channels in `changed` (all by default) get this step's
            version and a blob, the others keep their version from step 1."""
            cp = empty_checkpoint()
            cp["v"] = 4  # as LangGraph's runs write them (empty_checkpoint says 2)
            cp["channel_values"] = values
            cp["channel_versions"] = {k: f"{step if changed is None or k in changed else 1:032}.0" for k in values}
            new = {k: v for k, v in cp["channel_versions"].items() if changed is None or k in changed}
            config = parent or {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
            return await saver.aput(config, cp, {"step": step}, new)

        config = None
        for step in range(1, 4):
            config = await put("t1", step, {"messages": [f"m{i}" for i in range(step)], "unchanged": ["same"]},
                               parent=config, changed=None if step == 1 else ("messages",))
            await saver.aput_writes(config, [("messages", ["pending"])], task_id=f"task{step}")
        # the next turn has saved its blob (committed) but not yet its checkpoint
        async with pool.connection() as conn:
            await conn.execute("insert into checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)"
                               " values ('t1', '', 'messages', %s, 'msgpack', '\\x90')", (f"{4:032}.0",))
            row = await (await conn.execute(PRUNE_ROOT_ONLY_SQL, {"thread": "nobody"})).fetchone()
        assert row == {"found": False, "simple": False}  # a thread without checkpoints: nothing to do

        await saver.aprune(["t1"])
        async with pool.connection() as conn:
            checkpoints = await (await conn.execute(
                "select checkpoint_id, parent_checkpoint_id from checkpoints where thread_id = 't1'")).fetchall()
            writes = await (await conn.execute(
                "select task_id from checkpoint_writes where thread_id = 't1'")).fetchall()
            blobs = await (await conn.execute(
                "select channel, version from checkpoint_blobs where thread_id = 't1' order by 1, 2")).fetchall()
        # the head, its parent let go
        assert checkpoints == [{"checkpoint_id": config["configurable"]["checkpoint_id"], "parent_checkpoint_id": None}]
        assert writes == [{"task_id": "task3"}]
        assert [(b["channel"], b["version"]) for b in blobs] == [
            ("messages", f"{3:032}.0"), ("messages", f"{4:032}.0"), ("unchanged", f"{1:032}.0")]
        latest = await saver.aget_tuple({"configurable": {"thread_id": "t1"}})
        assert latest is not None and latest.checkpoint["channel_values"] == {
            "messages": ["m0", "m1", "m2"], "unchanged": ["same"]}

        # the statement alone does it for such a thread (no fallback): the next checkpoint saved, one is left
        config = await put("t1", 4, {"messages": ["m0", "m1", "m2", "m3"], "unchanged": ["same"]}, parent=config,
                           changed=("messages",))
        async with pool.connection() as conn:
            row = await (await conn.execute(PRUNE_ROOT_ONLY_SQL, {"thread": "t1"})).fetchone()
            left = await (await conn.execute("select count(*) from checkpoints where thread_id = 't1'")).fetchone()
        assert row == {"found": True, "simple": True} and left == {"count": 1}

        # a thread with a subgraph's namespace is the stock prune's: each namespace keeps its latest
        for step in (1, 2):
            await put("t2", step, {"messages": [step]})
            await put("t2", step, {"inner": [step]}, ns="child:1")
        async with pool.connection() as conn:
            row = await (await conn.execute(PRUNE_ROOT_ONLY_SQL, {"thread": "t2"})).fetchone()
            left = await (await conn.execute("select count(*) from checkpoints where thread_id = 't2'")).fetchone()
        assert row == {"found": True, "simple": False} and left == {"count": 4}  # refused, nothing touched
        await saver.aprune(["t2"])
        async with pool.connection() as conn:
            left = await (await conn.execute("select checkpoint_ns, count(*) from checkpoints where thread_id = 't2'"
                                             " group by 1 order by 1")).fetchall()
        # a call's namespace may go with its root checkpoint
        assert [(r["checkpoint_ns"], r["count"]) for r in left] in ([("", 1), ("child:1", 1)], [("", 1)])
    finally:
        await pool.close()


async def test_latest_checkpoint_read_in_another_statements_round_trip(pg_server_conninfo: str) -> None:
    """`LatestCheckpoint`: the thread's latest checkpoint read in the pipeline of another statement (the service's
    begin_turn), after it. The saver's next read of that thread, inside `using_prefetched`, is that value, once;
    any other read (another thread, a checkpoint_id, a namespace, a second read, outside the block) is the stock
    one; a thread without checkpoints prefetches None; a pre-v4 head is left to the stock read (not ready)."""
    from langgraph.checkpoint.base import empty_checkpoint

    from persistence.checkpointer import using_prefetched

    pool = await open_pool(PoolConfig(conninfo=create_database(pg_server_conninfo, "latest"), min_size=1, max_size=4))
    try:
        await migrate(pool)
        saver = make_checkpointer(pool)

        async def put(thread: str, step: int, v: int = 4, parent: dict | None = None) -> dict:
            cp = empty_checkpoint()
            cp["v"] = v
            cp["channel_values"] = {"messages": [f"m{i}" for i in range(step)]}
            cp["channel_versions"] = {"messages": f"{step:032}.0"}
            return await saver.aput(parent or {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, cp,
                                    {"step": step}, dict(cp["channel_versions"]))

        first = await put("t1", 1)
        await put("t1", 2)
        latest = saver.latest("t1")
        async with pool.connection() as conn, conn.pipeline():
            # the statement before it writes what the read must see (as begin_turn claims the session)
            cur = await conn.execute("insert into checkpoint_migrations (v) values (-1) returning v")
            await latest.send(conn)
            assert await cur.fetchone() == {"v": -1}
            await latest.receive()
        stock = await saver.aget_tuple({"configurable": {"thread_id": "t1"}})
        value = await latest.value()
        assert latest.ready and value is not None and stock is not None
        assert value.checkpoint == stock.checkpoint and value.config == stock.config
        assert value.checkpoint["channel_values"] == {"messages": ["m0", "m1"]}
        assert await latest.messages() == ["m0", "m1"] and await latest.value() is value

        await put("t1", 3)  # written after the read: only reads that are not the prefetched one see it
        with using_prefetched(latest):
            assert (await saver.aget_tuple({"configurable": {"thread_id": "t2"}})) is None
            old = await saver.aget_tuple(first)  # a checkpoint_id: the stock read
            assert old is not None and old.checkpoint["channel_values"] == {"messages": ["m0"]}
            ns = await saver.aget_tuple({"configurable": {"thread_id": "t1", "checkpoint_ns": "child:1"}})
            assert ns is None
            once = await saver.aget_tuple({"configurable": {"thread_id": "t1"}})
            again = await saver.aget_tuple({"configurable": {"thread_id": "t1"}})
        assert once is value and latest.used
        assert again is not None and again.checkpoint["channel_values"] == {"messages": ["m0", "m1", "m2"]}

        empty = saver.latest("nobody")
        async with pool.connection() as conn, conn.pipeline():
            await empty.send(conn)
            await empty.receive()
        assert empty.ready and await empty.value() is None and await empty.messages() == []

        # an old head whose parent may hold pending sends: the stock read migrates them
        await put("t3", 2, v=3, parent=await put("t3", 1, v=3))
        old_head = saver.latest("t3")
        async with pool.connection() as conn, conn.pipeline():
            await old_head.send(conn)
            await old_head.receive()
        assert not old_head.ready
        with using_prefetched(old_head):
            stock3 = await saver.aget_tuple({"configurable": {"thread_id": "t3"}})
        assert stock3 is not None and not old_head.used
    finally:
        await pool.close()
