"""A model tuned by `raft train` is asked in the conversation it was tuned on (Generator.prompt_format "raft"):
`<DOCUMENT>` blocks then the question, its short answer after `<ANSWER>:`, its free reply shown readable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rag.answering import grounding
from rag.answering.prompts import document_messages
from rag.errors import GeneratorError
from rag.generation.base import Generator
from rag.generation.models import PROMPT_FORMAT_FILE, read_prompt_format

RAFT_REPLY = ('##Reason: The answer to "What does LoRA freeze?" is in this sentence: ##begin_quote##LoRA freezes '
              'the original weights.##end_quote##\n<ANSWER>: the original weights')
SHOWN = 'The answer to "What does LoRA freeze?" is in this sentence: "LoRA freezes the original weights."\nAnswer: the original weights'


def test_readable_rewrites_the_markers_wherever_the_pieces_split_them() -> None:
    assert "".join(grounding.readable([RAFT_REPLY])) == SHOWN
    for cut in range(1, len(RAFT_REPLY)):  # every two-piece split, markers cut in half included
        assert "".join(grounding.readable([RAFT_REPLY[:cut], RAFT_REPLY[cut:]])) == SHOWN, cut
    pieces = [RAFT_REPLY[i:i + 3] for i in range(0, len(RAFT_REPLY), 3)]
    shown = list(grounding.readable(pieces))
    assert "".join(shown) == SHOWN and not any("##" in p or "<ANSWER" in p for p in shown)
    assert "".join(grounding.readable(["no markers ##", " at all"])) == "no markers ## at all"  # held, then released


def test_document_messages_are_the_raft_student_format() -> None:
    from raft.prompts import student_messages

    texts = ["LoRA freezes the original weights.", "QLoRA quantises them."]
    assert document_messages("What does LoRA freeze?", texts) == student_messages(texts, "What does LoRA freeze?")
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    m = document_messages(" Q? ", texts, turns, system="Be brief.")
    assert m[0] == {"role": "system", "content": "Be brief."} and m[1:3] == turns
    assert m[3]["content"] == "<DOCUMENT>LoRA freezes the original weights.</DOCUMENT>\n<DOCUMENT>QLoRA quantises " \
                              "them.</DOCUMENT>\nQ?"
    assert document_messages("Q?", []) == [{"role": "user", "content": "Q?"}]


def test_answer_prefix_ends_with_the_formats_final_mark() -> None:
    assert grounding.answer_prefix("Q?", "A quote.", grounding.FINAL_MARKS["raft"]).endswith("##end_quote##\n<ANSWER>:")
    assert grounding.answer_prefix("Q?", "A quote.").endswith("##end_quote##\nShort answer:")


@pytest.mark.parametrize("content, error", [
    ("{not json", "cannot read"),
    ('["raft"]', "prompt_format must be one of chat, raft, got None"),
    ('{"prompt_format": "alpaca"}', "got 'alpaca'"),
])
def test_a_bad_prompt_format_file_is_one_clear_error_naming_it(tmp_path: Path, content: str, error: str) -> None:
    assert read_prompt_format(tmp_path) == "chat"  # no file: the product's own chat prompt
    (tmp_path / PROMPT_FORMAT_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(GeneratorError, match=error) as e:
        read_prompt_format(tmp_path)
    assert str(tmp_path / PROMPT_FORMAT_FILE) in str(e.value) and "delete" in str(e.value)


class RecordingGenerator(Generator):
    """Delegates every call to the real model and records what it was asked (not a mock: the answers are the
    real model's); declares the wrapped model's capabilities and prompt format."""

    local = True
    supports_logprobs = True
    supports_prefixes = True
    small_model = True

    def __init__(self, inner) -> None:
        self.inner, self.asked, self.prefixes = inner, [], []
        self.model_id, self.context_window, self.prompt_format = inner.model_id, inner.context_window, inner.prompt_format

    def stream(self, messages, params=None):
        self.asked.append(messages)
        return self.inner.stream(messages, params)

    def generate_batch(self, batch, params=None, prefixes=None):
        self.asked.extend(batch)
        self.prefixes.extend(prefixes or [])
        return self.inner.generate_batch(batch, params, prefixes=prefixes)

    def continuation_logprobs(self, messages, prefix, continuations, first_tokens=None):
        self.asked.append(messages)
        return self.inner.continuation_logprobs(messages, prefix, continuations, first_tokens)

    def count_tokens(self, m):
        return self.inner.count_tokens(m)


@pytest.fixture(scope="module")
def raft_folder(tmp_path_factory) -> Path:
    """The bundled model's real files, linked into a folder that declares prompt_format "raft" (what `raft train`
    writes into merged/)."""
    from rag.generation.spec import resolve_model

    base = resolve_model("bundled").local_dir()
    folder = tmp_path_factory.mktemp("raft-model")
    for f in base.iterdir():
        if f.is_file():
            os.symlink(f, folder / f.name)
    (folder / PROMPT_FORMAT_FILE).write_text(json.dumps({"prompt_format": "raft"}), encoding="utf-8")
    return folder


@pytest.mark.llm
def test_a_raft_model_is_asked_with_documents_and_answers_after_the_answer_mark(small_index, raft_folder) -> None:
    from rag.api import make_pipeline
    from rag.generation.factory import get_generator

    gen = RecordingGenerator(get_generator(str(raft_folder)))
    assert gen.prompt_format == "raft" and get_generator("bundled").prompt_format == "chat"
    pipe = make_pipeline(small_index, generator=gen)
    resp = pipe.ask("What does LoRA freeze during fine-tuning?", answer_mode="grounded")
    user = resp.plan.messages[-1]["content"]
    assert [m["role"] for m in resp.plan.messages] == ["user"]  # no system prompt: trained without one
    assert user.startswith("<DOCUMENT>") and user.endswith("</DOCUMENT>\nWhat does LoRA freeze during fine-tuning?")
    assert user.count("<DOCUMENT>") == len(resp.plan.used_hits)
    ans = resp.answer()
    assert ans.quote is not None and gen.prefixes and gen.prefixes[-1].endswith("##end_quote##\n<ANSWER>:")
    assert all(m == resp.plan.messages for m in gen.asked)  # quote scoring and the short answer saw the same prompt

    free = pipe.ask("What does LoRA freeze during fine-tuning?", answer_mode="free")
    text = "".join(free)
    assert "##begin_quote##" not in text and "<ANSWER>:" not in text  # whatever the model wrote, shown readable
