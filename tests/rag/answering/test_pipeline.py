"""The RAG loop with the real bundled generator (tiny settings) and real retrieval (`rag serve`: tests/rag/server/)."""

from __future__ import annotations

import pytest

from rag.answering.attribution import attribute, clean_markers
from rag.answering.condense import condense
from rag.answering.plan import validate_question
from rag.answering.window import fit_prompt
from rag.api import make_pipeline, open_retriever
from rag.errors import GeneratorError, RagError
from rag.generation.base import Generator
from rag.generation.http import OpenAIGenerator
from tests.fake_openai import free_port


@pytest.fixture(scope="module")
def pipe(course_index):
    s = course_index.model_copy(update={"max_new_tokens": 12, "top_k": 3})
    return make_pipeline(s)


@pytest.fixture(scope="module")
def quiet_pipe(course_index):
    """The real pipeline and retriever with no language model: its generator is a server on a closed port, so
    any call to the model fails the test. Declared small, as the bundled model is (condense by concatenation)."""
    p = make_pipeline(course_index, generator=OpenAIGenerator("http://127.0.0.1:9/v1"))
    p.small_model = True
    return p


class CountingGenerator(Generator):
    """Wraps the real generator to count calls (not a mock: it delegates every call; declares the base
    class's capabilities)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.model_id, self.context_window = inner.model_id, inner.context_window

    def stream(self, messages, params=None):
        self.calls += 1
        return self.inner.stream(messages, params)

    def generate(self, messages, params=None):
        return "".join(self.stream(messages, params))

    def count_tokens(self, m):
        return self.inner.count_tokens(m)


@pytest.mark.llm
def test_answer_streams_then_lists_sources(pipe):
    resp = pipe.ask("What does LoRA freeze?")
    assert any("LoRA" in h.chunk.text for h in resp.plan.hits)
    pieces = list(resp)
    assert len(pieces) >= 2 and "".join(pieces).strip()
    ans = resp.answer()
    assert not ans.abstained and ans.sources
    d = ans.to_dict()
    assert set(d) >= {"question", "answer", "abstained", "sources", "timings"}
    assert {"chunk_id", "source", "section", "score", "snippet"} <= set(d["sources"][0])
    assert d["timings"]["first_token"] <= d["timings"]["generate"]


@pytest.mark.llm
def test_off_topic_question_abstains_without_calling_the_model(course_index, pipe):
    counting = CountingGenerator(pipe.generator)
    p = make_pipeline(course_index, retriever=pipe.retriever, generator=counting)
    ans = p.ask("How do I bake sourdough bread at home?").answer()
    assert ans.abstained and counting.calls == 0
    assert "do not" in ans.text and ans.sources and not any(s.cited for s in ans.sources)


def test_attribution_picks_the_passage_a_sentence_was_copied_from(course_index):
    retriever = open_retriever(course_index)  # no language model: attribution is the embedder's work
    hits = retriever.search("What does LoRA freeze?", k=5)
    target = next(i for i, h in enumerate(hits, start=1) if "LoRA" in h.chunk.text)
    copied = hits[target - 1].chunk.text.strip().split("\n")[0][:160]
    supports = attribute(f"Here is what the course says. {copied}", hits, retriever.embedder)
    assert any(s.passage == target and s.score >= 0.8 for s in supports)


def test_markers_pointing_at_nothing_are_removed():
    assert clean_markers("LoRA freezes weights [1][7]. Adapters are small [2, 9].", 3) == \
        "LoRA freezes weights [1]. Adapters are small [2]."


def test_follow_up_is_condensed_with_history(quiet_pipe):
    q = condense("and how does it compare to prompt tuning?",
                 [{"role": "user", "content": "What does LoRA freeze?"}, {"role": "assistant", "content": "..."}],
                 quiet_pipe.generator, small_model=True)
    assert "LoRA" in q and "prompt tuning" in q


@pytest.mark.parametrize("bad,msg", [("", "empty"), ("   \n", "empty"), ("x" * 100_000, "characters long"),
                                     ("abc\x00\x01def", "control characters")])
def test_bad_questions_get_clear_messages(bad, msg):
    with pytest.raises(RagError, match=msg):
        validate_question(bad)


def test_prompt_drops_lowest_passages_to_fit(quiet_pipe):
    gen = quiet_pipe.generator
    hits = quiet_pipe.retriever.search("What is LoRA?", k=5)
    budget = gen.count_tokens([{"role": "user", "content": hits[0].chunk.text + hits[1].chunk.text}]) + 120
    used, messages = fit_prompt("What is LoRA?", hits, [], gen, params=quiet_pipe.params, max_context_tokens=budget,
                                small_model=True)
    assert 1 <= len(used) < 5 and used == hits[:len(used)]
    assert hits[0].chunk.text.strip() in messages[-1]["content"]


def test_server_down_error_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = OpenAIGenerator(url, model_name="x", retries=2)
    with pytest.raises(GeneratorError, match="127.0.0.1"):
        gen.generate([{"role": "user", "content": "hi"}])


def test_bm25_mode_abstains_too(course_index, quiet_pipe):
    p = make_pipeline(course_index.model_copy(update={"mode": "bm25"}), retriever=quiet_pipe.retriever,
                      generator=CountingGenerator(quiet_pipe.generator))
    assert p.plan("How do I bake sourdough bread at home?").abstained


def test_self_contained_short_question_is_not_merged_with_history(quiet_pipe):
    history = [{"role": "user", "content": "What does LoRA freeze?"}, {"role": "assistant", "content": "..."}]
    assert condense("What is PEFT?", history, quiet_pipe.generator, small_model=True) == "What is PEFT?"
