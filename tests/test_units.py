"""Pure logic: text helpers, Markdown chunking, the offline answerer, cursors, SSE framing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from graph.models import OFFLINE_MODEL_NAME, ExtractiveChatModel, make_chat_model, model_label
from graph.prompts import system_prompt
from graph.retrieval import Passage
from graph.text import hangul_bigrams, is_korean, search_text, terms
from server.errors import ValidationFailed
from server.integrations.ingest import _front_matter, chunk_markdown
from server.schemas import sse_frame
from server.services.sessions import decode_cursor, encode_cursor
from server.settings import Settings


def test_hangul_bigrams_let_particles_match() -> None:
    assert hangul_bigrams("배송비는") == ["배송", "송비", "비는"]
    assert set(hangul_bigrams("배송비")) <= set(hangul_bigrams("배송비는 얼마"))
    assert hangul_bigrams("a 가 b") == ["가"]
    assert search_text("hello") == "hello"
    assert search_text("환불 기간").endswith("환불 기간")


def test_terms_and_language() -> None:
    assert "ship" in terms("How much is shipping?")  # Snowball stems, as PostgreSQL's english configuration
    assert "how" not in terms("How much is shipping?")
    assert terms("import taxes") == terms("import tax") and terms("cancelling") == terms("cancel")
    assert is_korean("배송비는 얼마인가요?")
    assert not is_korean("How much is shipping? 배")


def test_front_matter_and_chunks() -> None:
    meta, body = _front_matter("---\ntitle: T\nurl: https://x\n---\n# T\n\nintro\n\n## A\ntext a\n## B\ntext b\n")
    assert meta == {"title": "T", "url": "https://x"}
    chunks = chunk_markdown("T", body)
    assert [c.title for c in chunks] == ["T", "T › A", "T › B"]
    assert [c.content for c in chunks] == ["intro", "text a", "text b"]


def test_long_sections_are_split_on_paragraphs() -> None:
    para = "word " * 150
    chunks = chunk_markdown("T", f"## S\n{para}\n\n{para}\n\n{para}")
    assert len(chunks) == 3 and all(len(c.content) <= 1200 for c in chunks)


def _prompt(question: str, passages: list[Passage]) -> list:
    return [SystemMessage(system_prompt(passages)), HumanMessage(question)]


PASSAGES = [
    Passage("a#0", "Shipping › Fees", "https://x/a", 1.0,
            "Standard shipping costs 3,000 KRW per order.\nShipping is free for orders of 50,000 KRW or more."),
    Passage("b#0", "Returns", None, 0.5, "You can return unused items within 7 days of delivery."),
]


def test_extractive_model_quotes_the_matching_sentences() -> None:
    model = ExtractiveChatModel()
    answer = model.answer(_prompt("How much does shipping cost?", PASSAGES))
    assert answer.startswith("According to our help centre (Shipping › Fees)")
    assert "3,000 KRW" in answer and "50,000 KRW" in answer
    assert "return unused" not in answer


def test_extractive_model_says_when_it_does_not_know_in_the_users_language() -> None:
    model = ExtractiveChatModel()
    assert "could not find" in model.answer(_prompt("Who won the world cup?", PASSAGES))
    assert "찾지 못했습니다" in model.answer(_prompt("월드컵 우승팀은?", []))


async def test_extractive_model_streams_chunks_with_usage_on_the_last() -> None:
    model = ExtractiveChatModel()
    # langchain-core closes every stream with an empty chunk marked chunk_position="last"
    chunks = [c async for c in model.astream(_prompt("shipping cost?", PASSAGES)) if c.content]
    assert len(chunks) > 3
    assert all(c.usage_metadata is None for c in chunks[:-1])
    usage = chunks[-1].usage_metadata
    assert usage is not None and usage["output_tokens"] == len(chunks)
    whole = await model.ainvoke(_prompt("shipping cost?", PASSAGES))
    assert "".join(str(c.content) for c in chunks) == whole.content
    assert whole.usage_metadata == usage


def test_model_factory() -> None:
    assert model_label(make_chat_model(openai_api_key=None)) == OFFLINE_MODEL_NAME
    openai = make_chat_model(openai_api_key="sk-test", openai_base_url="http://127.0.0.1:9/v1", model_name="gpt-x")
    assert model_label(openai) == "gpt-x"
    assert "sk-test" not in repr(openai)


def test_cursor_round_trip_and_garbage() -> None:
    ts, sid = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC), uuid4()
    assert decode_cursor(encode_cursor(ts, sid)) == (ts, sid)
    for bad in ("", "!!!", "bm9waXBl", encode_cursor(ts, sid)[:-3]):
        with pytest.raises(ValidationFailed):
            decode_cursor(bad)


def test_sse_frame() -> None:
    frame = sse_frame(3, "token", {"delta": "안녕 \n"})
    assert frame == 'event: token\nid: 3\ndata: {"delta":"안녕 \\n"}\n\n'.encode()


def test_settings_accept_stage1_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "DB_HOST": "db.example", "DB_PORT": "6543", "DB_NAME": "shop", "DB_USER": "app", "DB_PASSWORD": "p@ss:word",
        "DB_POOL_MAX": "7", "DB_CONNECTION_TIMEOUT": "2500", "LANGSMITH_PROJECT_NAME": "stage1", "PORT": "9001",
        "PINECONE_INDEX_NAME": "rag-chatbot",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    s = Settings()
    assert s.conninfo() == "postgresql://app:p%40ss%3Aword@db.example:6543/shop"
    assert (s.db_pool_max, s.db_connection_timeout, s.langsmith_project, s.port) == (7, 2500, "stage1", 9001)
    assert not s.uses_embedded_db
    assert "p@ss" not in repr(s)


def test_tls_settings_apply_to_every_connection_string(monkeypatch: pytest.MonkeyPatch) -> None:
    from psycopg.conninfo import conninfo_to_dict

    for var in ("DATABASE_URL", "DATABASE_DIRECT_URL", "DB_HOST", "DB_SSLMODE", "DB_SSLROOTCERT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(database_url="postgresql://app:pw@pooler:6432/shop?sslmode=disable",  # type: ignore[arg-type]
                 database_direct_url="postgresql://migrator:pw@db:5432/shop",  # type: ignore[arg-type]
                 db_sslmode="verify-full", db_sslrootcert="/etc/ssl/rds.pem")
    for conninfo in (s.conninfo(), s.direct_conninfo()):
        params = conninfo_to_dict(conninfo or "")
        assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", "/etc/ssl/rds.pem")
    assert conninfo_to_dict(s.direct_conninfo() or "")["host"] == "db"
    monkeypatch.setenv("MIGRATE_ON_START", "false")
    assert Settings().auto_migrate is False  # the name; AUTO_MIGRATE still works
    monkeypatch.delenv("MIGRATE_ON_START")
    monkeypatch.setenv("AUTO_MIGRATE", "false")
    assert Settings().auto_migrate is False


def test_settings_read_the_env_file_of_app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import server.settings as settings_module

    (tmp_path / ".env.production").write_text("DB_POOL_MAX=33\nOPENAI_MODEL=gpt-4.1-mini\n")
    monkeypatch.setattr(settings_module, "ENV_DIR", tmp_path)
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.delenv("DB_POOL_MAX", raising=False)
    s = settings_module.load_settings()
    assert (s.app_env, s.db_pool_max, s.openai_model) == ("production", 33, "gpt-4.1-mini")
    monkeypatch.setenv("DB_POOL_MAX", "44")  # the process environment wins over the file
    assert settings_module.load_settings().db_pool_max == 44


def test_env_example_documents_every_setting() -> None:
    import re

    from server.settings import PROJECT_ROOT, Settings

    text = (PROJECT_ROOT / "env" / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.M))
    aliases = {"LANGSMITH_PROJECT": "LANGSMITH_PROJECT_NAME", "MODEL_PRICES": "MODEL_PRICES_JSON"}
    missing = {aliases.get(f.upper(), f.upper()) for f in Settings.model_fields} - documented
    assert not missing


def test_prompt_variants_are_sticky_and_weighted() -> None:
    import uuid

    import pytest

    from graph.prompts import VariantPicker

    picker = VariantPicker.parse("v1:80, v2:20")
    ids = [uuid.UUID(int=i * 7919 + 1) for i in range(5000)]
    first = [picker.pick(i) for i in ids]
    assert first == [VariantPicker.parse("v2:20,v1:80").pick(i) for i in ids]  # order-independent, stable
    share_v2 = first.count("v2") / len(first)
    assert 0.17 < share_v2 < 0.23
    assert {VariantPicker.parse("v1").pick(i) for i in ids} == {"v1"}
    with pytest.raises(ValueError, match="unknown prompt variant"):
        VariantPicker.parse("v1:50,v9:50")
    with pytest.raises(ValueError, match="positive"):
        VariantPicker.parse("v1:0")


def test_follow_ups_carry_the_topic_over_and_new_topics_do_not() -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    from graph.condense import is_follow_up, needs_condensing, speaks_of, standalone_question

    for question in ("And to Jeju?", "what about saturdays", "can it go in the microwave", "how long do i have to pay",
                     "배송비는 누가 내요?", "그럼 언제 없어져요", "제주도인데요", "얼마에요"):
        assert is_follow_up(question), question
    for question in ("Can I change the delivery address after ordering?", "When will I get my money back after a "
                     "return?", "택배 받았는데 상자 안에 주문한 상품 하나가 빠져 있어요"):
        assert not is_follow_up(question), question
    talk = [HumanMessage("반품하고 싶어요"), AIMessage("..."), HumanMessage("배송비는 누가 내요?")]
    assert standalone_question(talk) == "반품하고 싶어요 배송비는 누가 내요?" and needs_condensing(talk)
    assert not needs_condensing(talk[:1])  # a session's first turn
    assert standalone_question([HumanMessage("How much is shipping?"), AIMessage("..."),
                                HumanMessage("When will I get my money back after a return?")]) == \
        "When will I get my money back after a return?"
    # a carried-over search that found nothing of the follow-up itself was a topic switch
    assert not speaks_of("do you take kakaopay", "Standard shipping costs 3,000 KRW; delivery takes 1 to 3 days")
    assert speaks_of("do you take kakaopay", "We accept KakaoPay, Naver Pay and Toss Pay")


def test_korean_is_cut_into_morphemes_for_the_index() -> None:
    from graph.text import korean_morphemes, search_text

    assert korean_morphemes("배송비는 얼마인가요?") == ["배송비", "얼마"]
    assert "걸리" in korean_morphemes("영업일 기준 1~3일이 걸립니다") and "걸리" in korean_morphemes("며칠 걸려요?")
    assert search_text("환불 기간", "bigrams") == "환불 기간 환불 기간"
    assert search_text("환불 기간", "kiwi") == "환불 기간 환불 기간"
    assert search_text("배송비는", "kiwi+bigrams") == "배송비는 배송비 배송 송비 비는"
    assert search_text("shipping fees") == "shipping fees"


def test_the_offline_answer_quotes_one_section_and_knows_when_to_stop() -> None:
    from graph.models import sentences_of

    assert sentences_of("Orders before 2 p.m. (KST) leave today. Delivery takes 1 to 3 days.") == [
        "Orders before 2 p.m. (KST) leave today.", "Delivery takes 1 to 3 days."]
    assert sentences_of("Pick an address such as yourshop.sixshop.example, then a template.") == [
        "Pick an address such as yourshop.sixshop.example, then a template."]
    model = ExtractiveChatModel()
    passages = [Passage("a#0", "Shipping › Fees", None, 1.0, "Standard shipping costs 3,000 KRW per order."),
                Passage("b#0", "Account › Passwords", None, 0.9, "A password reset link is valid for 30 minutes.")]
    answer = model.answer(_prompt("how much is shipping", passages))
    assert "3,000 KRW" in answer and "password" not in answer  # never a sentence of another section
    assert "could not find" in model.answer(_prompt("are your products vegan", passages))


def test_shoppers_words_find_the_help_centres() -> None:
    """graph/lexicon.py: a shortened or everyday word brings the help centre's word into the question's terms and
    its full-text search; a Korean key is a whole morpheme ("색" is not inside "검색"), an English one a whole word
    ("text" is not inside "textbook")."""
    from graph.text import question_terms, with_help_centre_words

    assert with_help_centre_words("얼마 이상 사면 무배에요?").endswith("무료배송 무료 배송")
    assert {"@비밀", "@번호"} <= question_terms("비번 까먹었어요")  # Kiwi cuts 비밀번호 in two
    assert with_help_centre_words("stop sending me ads").endswith("marketing messages")
    assert {"custom", "duti"} <= question_terms("who pays import tax on overseas orders")
    assert with_help_centre_words("검색이 안 돼요") == "검색이 안 돼요"
    assert with_help_centre_words("my textbook") == "my textbook"
    assert with_help_centre_words("how much is shipping") == "how much is shipping"


def test_the_offline_answer_does_not_quote_a_page_that_never_names_what_was_asked() -> None:
    """A Korean question naming something no passage mentions ("학생" in "학생 할인") is not answered from a
    section that merely shares another of its words ("할인"); nouns that name no topic ("조건", "최소"), a word
    the lexicon knows ("셔츠" is clothing) and a compound the passages cut otherwise ("제주" in "제주도") are not
    held against a question."""
    from graph.models import unknown_nouns

    coupons = Passage("m#3", "회원 등급, 적립금 및 쿠폰 › 쿠폰", None, 1.0,
                      "주문 한 건에 쿠폰은 하나만 사용할 수 있고, 할인 상품에는 쿠폰과 적립금을 함께 쓸 수 없습니다.")
    levels = Passage("m#0", "회원 등급, 적립금 및 쿠폰 › 회원 등급", None, 1.0,
                     "20만 원 이상은 실버, 50만 원 이상은 골드입니다.")
    care = Passage("p#1", "사이즈 및 상품 관리 › 세탁 및 관리", None, 1.0, "면과 린넨은 찬물에 울코스로 세탁하세요.")
    fees = Passage("s#1", "배송 안내 › 배송비", None, 1.0,
                   "제주도 및 도서산간 지역은 추가 배송비 3,000원이 부과됩니다.")

    def pairs(*given: Passage) -> list[tuple[str, str]]:
        return [(p.title, p.content) for p in given]

    assert unknown_nouns("학생 할인 있어요?", pairs(coupons)) == ["학생"]
    assert unknown_nouns("골드 등급 조건", pairs(levels)) == []
    assert unknown_nouns("린넨 셔츠 빨래 어떻게 해요", pairs(care)) == []
    assert unknown_nouns("제주 추가 배송비 있어요?", pairs(fees)) == []
    model = ExtractiveChatModel()
    assert "찾지 못했습니다" in model.answer(_prompt("학생 할인 있어요?", [coupons]))
    assert "골드" in model.answer(_prompt("골드 등급 조건", [levels]))
    assert "3,000원" in model.answer(_prompt("제주 추가 배송비 있어요?", [fees]))
    quoting = ExtractiveChatModel(abstain_on_unknown_nouns=False)  # what it did before: a shared word was enough
    assert "할인 상품" in quoting.answer(_prompt("학생 할인 있어요?", [coupons]))


def test_cors_and_the_default_store_follow_the_environment() -> None:
    from server.settings import LOCAL_ORIGINS, Settings

    assert Settings(app_env="production").cors_origins() == ([], None)  # no other origin unless configured
    assert Settings(app_env="development").cors_origins() == ([], LOCAL_ORIGINS)
    assert Settings(app_env="production", cors_allow_origins="https://a.example, https://b.example/").cors_origins() \
        == (["https://a.example", "https://b.example"], None)
    assert Settings(app_env="production").default_store() is None  # a thread's store must be said
    assert Settings(app_env="development").default_store() == "demo-store"
    assert Settings(app_env="production", default_store_id="shop-1").default_store() == "shop-1"


async def test_a_search_begun_ahead_is_the_retrieve_nodes_and_traced_as_one() -> None:
    """The service begins a turn's search beside the start of its run when the question is searched as it is
    (searched_as_asked): the retrieve node takes it (one search, not two), its retriever run is in the trace as
    usual, and a search the node does not take (another query) is cancelled by discard."""
    import asyncio
    from typing import Any

    from langchain_core.callbacks import AsyncCallbackHandler
    from langchain_core.documents import Document
    from langgraph.checkpoint.memory import InMemorySaver

    from graph.graph import build_graph, searched_as_asked
    from graph.retrieval import ScopedRetriever, SearchAhead
    from graph.state import ChatContext

    class Counting(ScopedRetriever):
        searches: list[str] = []
        gate: Any = None

        def _get_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
            raise AssertionError("the service searches asynchronously")

        async def _asearch(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
            self.searches.append(query)
            if self.gate is not None:
                await self.gate.wait()
            return [Document(id="c1", page_content="Shipping is 3,000 won.", metadata={"title": "Shipping",
                                                                                      "url": "u", "score": 1.0})]

    class Runs(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.retriever_runs: list[str] = []

        async def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
            self.retriever_runs.append(query)

    retriever = Counting(searches=[])
    ctx = ChatContext(store_id="s1", audience="shopper", model=ExtractiveChatModel(), retriever=retriever, k=3)
    before = [HumanMessage("How do I return an item?"), AIMessage("Within 7 days.")]
    assert searched_as_asked("How much is shipping?", ctx, [])  # a first turn
    assert searched_as_asked("How do I pay with a credit card abroad?", ctx, before)  # stands alone
    assert not searched_as_asked("How much is shipping?", ctx, before)  # short: searched with the one before
    assert not searched_as_asked("and to jeju?", ctx, before)
    assert not searched_as_asked("I want to talk to a person", ctx, [])  # the handoff, no search
    ctx.search_ahead = SearchAhead(retriever, "How much is shipping?", k=3, store_id="s1", audience="shopper")
    runs = Runs()
    graph = build_graph(InMemorySaver())
    out = await graph.ainvoke({"messages": [HumanMessage("How much is shipping?")]},
                              {"configurable": {"thread_id": "t"}, "callbacks": [runs]}, context=ctx)
    assert retriever.searches == ["How much is shipping?"] and ctx.search_ahead.taken
    assert runs.retriever_runs == ["How much is shipping?"]
    assert out["passages"][0]["title"] == "Shipping"

    # not the node's query (or another store's): not taken, and cancelled at the end of the run
    retriever.gate = asyncio.Event()
    other = SearchAhead(retriever, "How much is shipping?", k=3, store_id="s1", audience="shopper")
    assert other.take(retriever, "How much is shipping?", k=3, store_id="s2", audience="shopper") is None
    assert other.take(retriever, "returns", k=3, store_id="s1", audience="shopper") is None
    other.discard()
    await asyncio.sleep(0)
    assert other.begun.cancelled()


async def test_a_low_embedding_similarity_alone_does_not_decline() -> None:
    """The retrieve node drops what it found only on evidence both ways (graph/graph.py names_its_words): the closest
    passage's embedding similarity under the model's threshold (min_similarity) and nothing of the question in it. A
    question naming what the page names is answered; one sharing a word is answered with the closest section said to
    be the closest; one sharing nothing is declined."""
    from typing import Any

    from langchain_core.documents import Document
    from langgraph.checkpoint.memory import InMemorySaver

    from graph.graph import build_graph
    from graph.retrieval import ScopedRetriever
    from graph.state import ChatContext

    class Distant(ScopedRetriever):  # finds the payment methods, with an embedding similarity under the threshold
        def _get_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
            raise AssertionError("the graph searches asynchronously")

        async def _asearch(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
            return [Document(id="p1", page_content="We accept credit and debit cards (Visa, Mastercard, AMEX, JCB).",
                             metadata={"title": "Payment methods › Accepted payment methods", "url": "u",
                                       "score": 0.5, "similarity": 0.80})]

    graph = build_graph(InMemorySaver())
    ctx = ChatContext(store_id="s1", model=ExtractiveChatModel(), retriever=Distant(), k=3, min_similarity=0.82)
    for question, kept, says in (("do you take amex", True, "According to our help centre"),
                                 ("do you sell gift cards", True, "The closest our help centre comes to that is"),
                                 ("what is the capital of france", False, "could not find")):
        out = await graph.ainvoke({"messages": [HumanMessage(question)]},
                                  {"configurable": {"thread_id": question}}, context=ctx)
        assert bool(out["passages"]) is kept, question
        answer = str(out["messages"][-1].content)
        assert answer.startswith(says) or says in answer, (question, answer)
        assert ("AMEX" in answer) is kept, question


def test_how_people_type_numbers_and_typos_does_not_hide_what_they_ask() -> None:
    """Amounts in Sino-Korean numerals and with thousands separators read as the help centre writes them; an order
    number names no topic; an English word with one typo counts as the section's word (graph/text.py, models.py)."""
    from graph.models import best_section, typed_near
    from graph.text import normalized_numbers, question_terms, terms

    assert normalized_numbers("오만원 넘게 사면") == "50000원 넘게 사면"
    assert normalized_numbers("이만오천 원, 육천원") == "25000 원, 6000원"
    assert normalized_numbers("사원 할인") == "사원 할인"  # a word that only starts like a numeral
    assert "50000" in terms("50,000원 이상 주문") and "50000" in question_terms("오만원 넘으면 무료예요?")
    assert not any(t.isdigit() for t in question_terms("where is order 2026120612345"))
    assert "50000" in question_terms("is shipping free over 50000 won")  # an amount is not an order number
    assert typed_near({"purchs", "ddo"}, terms("Track your purchase")) == {"purchs"}  # "ddo": too short to tell
    fees = ("Shipping › Fees", "Delivery costs 3,000 KRW; orders of 50,000 KRW or more ship free.")
    section = best_section("how much is dellivery", [fees])
    assert section is not None and section.coverage == 1.0


async def test_a_turns_events_leave_in_batches_a_pause_flushes_at_once() -> None:
    """Turn.batches: events that come while the last write is recent gather into one write (one SSE event each
    still), an event after a pause leaves at once; a wide window here keeps the test free of scheduling luck."""
    import asyncio
    import time as clock

    from server.services.turns.events import Turn

    turn = Turn(session_id=uuid4(), store_id="s", user_id=None, user_message_id=uuid4(), message_id=uuid4(),
                content="hi", model="m", prompt_variant="v1", started=clock.perf_counter())
    got: list[list[str]] = []

    async def read() -> None:
        async for batch in turn.batches(window_s=0.3):
            got.append([data.get("delta", event) for _, event, data in batch])

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    for delta in ("a", "b", "c"):  # a burst before the reader runs: one write
        turn.emit("token", {"delta": delta})
    await asyncio.sleep(0.05)
    turn.emit("token", {"delta": "d"})  # within the window of the last write: they wait for it together
    await asyncio.sleep(0.05)
    turn.emit("token", {"delta": "e"})
    await asyncio.sleep(0.6)  # a pause: the next one goes at once, alone
    turn.emit("token", {"delta": "f"})
    await asyncio.sleep(0.05)
    assert got == [["a", "b", "c"], ["d", "e"], ["f"]]
    turn.end()
    await reader
    ids = [n async for n, _, _ in turn.events()]
    assert ids == list(range(1, 7))  # still one event, with its own id, per token


async def test_any_other_chat_model_streams_through_its_own_astream() -> None:
    """graph/answer_stream.py reads OpenAI-compatible servers and the offline answerer directly; another chat
    model (here LangChain's fake) streams through its own `astream`, its chunks to the same callable, and the
    whole answer comes back as one AIMessage."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    from graph.answer_stream import stream_answer

    model = GenericFakeChatModel(messages=iter([AIMessage("Shipping is free over 50,000 KRW.")]))
    chunks: list[str] = []
    answer = await stream_answer(model, [HumanMessage("shipping?")], on_text=chunks.append,
                                 tools=[{"type": "function", "function": {"name": "request_human",
                                                                          "parameters": {"type": "object"}}}])
    assert len(chunks) > 1 and "".join(chunks) == answer.content == "Shipping is free over 50,000 KRW."
    assert type(answer) is AIMessage


async def test_the_offline_answerer_streams_its_pieces_and_bills_its_units() -> None:
    from graph.answer_stream import stream_answer

    model = ExtractiveChatModel()
    passage = Passage(id="p1", title="Shipping", url=None, score=1.0,
                      content="Standard shipping costs 3,000 KRW per order. Orders ship within two days.")
    prompt = [SystemMessage(system_prompt([passage], "v1")), HumanMessage("How much is shipping?")]
    chunks: list[str] = []
    answer = await stream_answer(model, prompt, on_text=chunks.append)
    assert "".join(chunks) == answer.content and "3,000 KRW" in str(answer.content)
    assert answer.usage_metadata and answer.usage_metadata["output_tokens"] == len(chunks)
    assert answer.response_metadata["finish_reason"] == "stop"
