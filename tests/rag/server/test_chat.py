"""`rag serve` speaks OpenAI: the official `openai` client and the project's own HTTP backend read its answers,
streamed and not, the same either way; the shipped course is answered by its RAFT adapter."""

from __future__ import annotations

import pytest

from rag.generation.base import GenerationParams
from rag.generation.http import OpenAIGenerator
from rag.generation.spec import COURSE_MODEL_ID
from tests.rag.server.served import KEY, msgs, start_server


@pytest.mark.slow  # another `rag serve` process, and the adapter merged on first use
@pytest.mark.llm
def test_the_shipped_course_is_served_by_its_raft_adapter(course_index):
    with start_server(course_index.index_dir, env={"RAG_ANSWER_MODE": "grounded"}) as served:
        assert served.health()["model"] == COURSE_MODEL_ID  # the default model on the shipped course
        reply = served.client().chat.completions.create(model="course-rag", messages=msgs(), max_tokens=8)
        text = reply.choices[0].message.content
        assert text.strip() and "##" not in text and "<ANSWER>" not in text and reply.model_extra["sources"]


@pytest.mark.llm
def test_openai_client_stream_and_non_stream_give_the_same_answer(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == ["course-rag"]
    done = client.chat.completions.create(model="course-rag", messages=msgs(), max_tokens=6)
    choice = done.choices[0]
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-") and done.model == "course-rag"
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length") and len(done.choices) == 1
    assert done.usage.completion_tokens <= 6
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens > 0
    assert done.model_extra["sources"] and done.model_extra["abstained"] is False

    chunks = list(client.chat.completions.create(model="course-rag", messages=msgs(), max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text.strip() == choice.message.content  # greedy: the same answer either way
    assert [c.choices[0].finish_reason for c in with_choices].count(None) == len(with_choices) - 1
    assert with_choices[-1].choices[0].finish_reason == choice.finish_reason
    assert with_choices[-1].model_extra["sources"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == done.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.llm
def test_text_parts_and_system_messages_are_read(server):
    client = server.client()
    plain = client.chat.completions.create(model="course-rag", messages=msgs(), max_tokens=4)
    parts = client.chat.completions.create(model="course-rag", max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What does LoRA"}, {"type": "text", "text": "freeze?"}]}])
    assert parts.choices[0].message.content.strip()
    assert parts.model_extra["sources"][0]["source"] == plain.model_extra["sources"][0]["source"]
    system = client.chat.completions.create(model="course-rag", max_tokens=4, messages=[
        {"role": "system", "content": "Answer in one word."}, {"role": "developer", "content": "Be formal."},
        *msgs()])
    assert system.usage.prompt_tokens > plain.usage.prompt_tokens  # the instructions reached the prompt


@pytest.mark.llm
def test_the_projects_http_backend_reads_rag_serve(server):
    gen = OpenAIGenerator(server.url + "/v1", model_name="course-rag", api_key=KEY)
    pieces = list(gen.stream(msgs(), GenerationParams(max_new_tokens=6)))
    assert pieces and "".join(pieces).strip()
