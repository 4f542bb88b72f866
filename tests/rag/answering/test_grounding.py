"""Grounded answers (issue 14) with the real bundled model at tiny settings on the shared small corpus
(tests/conftest.py: a LoRA passage, an attention passage, a sampling passage), real embedder and FAISS."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from rag.answering import grounding
from rag.answering.pipeline import RagPipeline
from rag.api import make_pipeline
from rag.errors import RagError

pytestmark = pytest.mark.llm  # runs the bundled causal model in-process

LORA_Q = "What does LoRA freeze during fine-tuning?"


@pytest.fixture(scope="module")
def pipe(small_index) -> RagPipeline:
    return make_pipeline(small_index)


def test_quote_candidates_and_spans_are_the_passage_own_words():
    text = "# Title\n\nLoRA freezes the\nweights of the model. It trains two small matrices!\n- a list item here"
    cands = grounding.quote_candidates(text)
    assert cands == ["LoRA freezes the weights of the model.", "It trains two small matrices!", "a list item here"]
    start, end = grounding.find_span(text, cands[0])
    assert text[start:end] == "LoRA freezes the\nweights of the model."  # the passage's own line break kept
    assert grounding.find_span(text, "not in the passage at all") is None


def test_sentences_repeated_across_passages_are_never_quoted(embedder):
    refer = "Refer: Generative AI course by Example Academy, week one."
    passages = [f"Question {i}: what does topic {i} mean?\n\n{refer}" for i in range(3)] + [
        "LoRA freezes the weights of the pre-trained model and trains two small matrices."]
    boiler = grounding.boilerplate_sentences(passages)
    assert boiler == {refer}  # in 3 passages; each question is in one
    assert refer not in grounding.quote_candidates(passages[0], exclude=boiler)
    assert grounding.boilerplate_sentences(passages, min_passages=4) == frozenset()
    # the retriever alone would pick the reference line for a question about the course's weeks
    question = "Which course and week does this refer to?"
    for spans in grounding.SPAN_MODES:
        free = grounding.choose_quote(None, [], question, passages[:1], embedder, weight=1.0, use_model=False,
                                      spans=spans)
        assert free is not None and free.text == refer
    kept = grounding.choose_quote(None, [], question, passages[:1], embedder, weight=1.0, use_model=False,
                                  exclude=boiler, spans="lines")
    assert kept is not None and kept.text.startswith("Question 0")
    # by default a question is never a quote either (rag/answering/sentences.py): nothing left to quote
    assert grounding.choose_quote(None, [], question, passages[:1], embedder, weight=1.0, use_model=False,
                                  exclude=boiler) is None


def test_combine_weights_the_retriever_against_the_model():
    model, retr = [-1.0, -3.0], [0.1, 0.9]
    assert grounding.combine(model, retr, 0.0).argmax() == 0
    assert grounding.combine(model, retr, 1.0).argmax() == 1
    assert grounding.combine(None, retr, 0.0).argmax() == 1  # no log-probabilities: the retriever decides


def test_lora_question_quotes_the_lora_passage_listed_first_and_marked(pipe):
    resp = pipe.ask(LORA_Q)
    assert resp.answer_mode == "grounded"  # the default for the in-process model
    pieces = list(resp)
    ans = resp.answer()
    assert pieces[0].startswith('"') and ans.quote is not None
    first = ans.sources[0]
    assert "LoRA" in first.text and "freezes" in ans.quote.text
    assert first.cited and first.quote is ans.quote and first.n == ans.quote.passage
    # the quote is the passage's own text at its span, and is shown in the answer
    assert first.text[ans.quote.start:ans.quote.end] == ans.quote.text
    assert grounding.verify_quote(ans.quote, first.text)
    assert " ".join(ans.quote.text.split()) in ans.text and f"[{first.n}]" in ans.text
    assert ans.short_answer and ans.short_answer in ans.text


def test_sources_list_every_passage_given_supporting_first(pipe):
    resp = pipe.ask(LORA_Q)
    ans = resp.answer()
    assert sorted(s.n for s in ans.sources) == list(range(1, len(resp.plan.used_hits) + 1))
    assert [s.chunk_id for s in sorted(ans.sources, key=lambda s: s.n)] == [h.chunk.id for h in resp.plan.used_hits]
    cited = [s.cited for s in ans.sources]
    assert cited[0] and cited == sorted(cited, reverse=True)  # every marked one before every unmarked one
    d = ans.to_dict()
    assert d["answer_mode"] == "grounded" and d["quote"]["text"] == ans.quote.text
    assert d["sources"][0]["quote"] == d["quote"]
    assert all(s["quote"] is None for s in d["sources"][1:])


def test_free_mode_still_answers_and_lists_every_passage(pipe):
    resp = pipe.ask(LORA_Q, answer_mode="free")
    text = "".join(resp)
    ans = resp.answer()
    assert ans.answer_mode == "free" and ans.quote is None and text.strip()
    assert len(ans.sources) == len(resp.plan.used_hits)
    assert not any(s.quote for s in ans.sources)


def test_retriever_only_choice_needs_no_log_probabilities(pipe):
    texts = [h.chunk.text for h in pipe.retriever.search(LORA_Q, 3)]
    q = grounding.choose_quote(pipe.generator, [], LORA_Q, texts, pipe.retriever.embedder, weight=1.0)
    assert q is not None and "LoRA" in q.text and grounding.verify_quote(q, texts[q.passage - 1])


def test_unknown_answer_mode_is_one_clear_error(pipe):
    with pytest.raises(RagError, match="unknown answer mode 'quoted'"):
        pipe.ask(LORA_Q, answer_mode="quoted")


def test_cli_json_carries_quote_span_and_all_sources(small_index, monkeypatch):
    from rag.cli import cli

    monkeypatch.setenv("RAG_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("RAG_TOP_K", "2")
    res = CliRunner().invoke(cli, ["ask", "--index-dir", str(small_index.index_dir), "--json", LORA_Q])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output[res.output.index("{"):])
    assert d["answer_mode"] == "grounded" and len(d["sources"]) == 2
    q, src = d["quote"], d["sources"][0]
    assert src["cited"] and src["quote"] == q and "LoRA" in q["text"]
    res = CliRunner().invoke(cli, ["ask", "--index-dir", str(small_index.index_dir), "--answer-mode", "free", LORA_Q])
    assert res.exit_code == 0 and "Sources:" in res.output
    listed = re.findall(r"^[ *]\[(\d+)\] ", res.output, re.MULTILINE)
    assert sorted(listed) == ["1", "2"]  # both passages given to the model, marked or not
