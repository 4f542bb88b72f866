"""Pydantic models of the OpenAI Chat Completions request and response, as `rag serve` implements them.

Every request field of the reference (openai-python 3.x `CompletionCreateParams`, the OpenAPI spec it is
generated from) is declared here with the reference's type, so a wrong type is refused by pydantic with
the field's path (`stop[0]`, `messages[2].content[1].type`) instead of failing later (`stop: [5]` was a
500). A field the server supports behaves as the reference says; one it cannot honour is accepted only
at its "off" value (`n: 1`, `logprobs: false`, `tools: []`, `store: false`, ...) and otherwise refused
with a 400 naming it; a field that is not in the reference is refused as unrecognised, as OpenAI does.

| field | here |
|---|---|
| messages | system, developer, user, assistant; content as text or a list of text parts (assistant: refusal parts too); `name` accepted. tool/function messages, image/audio/file parts, tool calls: 400 |
| model | required; must be the served id (else 404, as OpenAI does for an unknown model) |
| max_completion_tokens, max_tokens | answer length in tokens, 1..8192 (both given: they must agree) |
| temperature 0..2, top_p 0..1, seed, stop (a string or up to 4) | as the reference; top_p 0 means greedy |
| stream (strict bool), stream_options.include_usage | SSE chunks, a final usage chunk with `choices: []` |
| n | 1 only |
| frequency_penalty, presence_penalty | -2..2; only 0 (use the `repetition_penalty` extension) |
| logprobs, top_logprobs, logit_bias | off only |
| tools, tool_choice, functions, function_call, parallel_tool_calls | no tools: empty / "none" / "auto" only |
| response_format | {"type": "text"} only |
| audio, modalities, prediction, reasoning_effort, verbosity, web_search_options, moderation | unset (modalities ["text"]) only |
| store | false only (nothing is stored) |
| metadata, user, safety_identifier, prompt_cache_key, prompt_cache_retention, prompt_cache_options, service_tier (auto/default) | accepted; they label or route a request and do not change the answer |

Extensions (not in the reference, accepted like vLLM does): `top_k` and `repetition_penalty` (sampling),
`retrieval_mode` and `retrieval_top_k` (which passages the answer is built from). The response adds
`sources`, `abstained` and `timings` to the completion (and `sources`/`abstained` to the last chunk).

Bodies are parsed by pydantic's own JSON parser (`model_validate_json`), whose nesting limit turns a
100,000-deep array into a 400 where `json.loads` raised RecursionError (a 500).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_STOP = 4  # the reference: "Up to 4 sequences"
MAX_NEW_TOKENS = 8192
MAX_MESSAGES = 256
DEFAULT_MAX_CONVERSATION_CHARS = 48_000  # every message's text together; ~12k tokens, above any window here
TAG = "~"  # union tags start with it, so error paths can leave them out

Finite = Annotated[float, Field(allow_inf_nan=False)]


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", message)


def _kind(value: Any) -> str | None:
    """Union tag of a JSON value that may be a string or an array (None: neither)."""
    return f"{TAG}string" if isinstance(value, str) else f"{TAG}array" if isinstance(value, list) else None


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# ---- messages ------------------------------------------------------------------------------------

class TextPart(_Strict):
    """`{"type": "text", "text": "..."}`: the only content part this server reads."""

    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None  # a caching hint: accepted, no effect


class RefusalPart(_Strict):
    """An assistant's earlier refusal, `{"type": "refusal", "refusal": "..."}`; read as its text."""

    type: Literal["refusal"]
    refusal: str


class OtherPart(BaseModel):
    """Any other content part (image_url, input_audio, file): refused, naming its type."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Any = None

    @field_validator("type")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise _unsupported(f"content parts of type {value!r} are not supported: this server reads text only "
                           "(send {\"type\": \"text\", \"text\": ...} parts or a plain string)")


def _part_kind(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    return f"{TAG}text" if kind == "text" else f"{TAG}refusal" if kind == "refusal" else f"{TAG}other"


_PART_ERROR = {"custom_error_type": "invalid_content_part",
               "custom_error_message": "a content part must be an object with a \"type\""}
UserPart = Annotated[Annotated[TextPart, Tag(f"{TAG}text")] | Annotated[OtherPart, Tag(f"{TAG}other")] | Annotated[OtherPart, Tag(f"{TAG}refusal")],
                     Discriminator(_part_kind, **_PART_ERROR)]
AssistantPart = Annotated[Annotated[TextPart, Tag(f"{TAG}text")] | Annotated[RefusalPart, Tag(f"{TAG}refusal")] | Annotated[OtherPart, Tag(f"{TAG}other")],
                          Discriminator(_part_kind, **_PART_ERROR)]

_CONTENT_ERROR = {"custom_error_type": "invalid_content",
                  "custom_error_message": "content must be a string or an array of content parts"}
Content = Annotated[Annotated[str, Tag(f"{TAG}string")] | Annotated[list[UserPart], Tag(f"{TAG}array")],
                    Discriminator(_kind, **_CONTENT_ERROR)]
AssistantContent = Annotated[Annotated[str, Tag(f"{TAG}string")] | Annotated[list[AssistantPart], Tag(f"{TAG}array")],
                             Discriminator(_kind, **_CONTENT_ERROR)]


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text if isinstance(p, TextPart) else p.refusal for p in content)


class _Message(_Strict):
    name: str | None = None  # the participant's name: accepted, it does not change the answer

    @property
    def text(self) -> str:
        """The message's text (text parts joined with newlines)."""
        return _text(getattr(self, "content", None))


class SystemMessage(_Message):
    role: Literal["system"]
    content: Content


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: AssistantContent | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    @field_validator("tool_calls", "function_call", "audio")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        if value:
            raise _unsupported("not supported: this server has no tools or audio")
        return value


class ToolMessage(BaseModel):
    """tool and function messages: refused (this server offers no tools, so none can have been called)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    role: str

    @field_validator("role")
    @classmethod
    def _refuse(cls, value: str) -> str:
        raise _unsupported(f"{value} messages are not supported: this server has no tools")


ROLES = ("system", "developer", "user", "assistant")


def _role(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    role = value.get("role")
    if role in ROLES:
        return f"{TAG}{role}"
    return f"{TAG}tool" if role in ("tool", "function") else None


Message = Annotated[Annotated[SystemMessage, Tag(f"{TAG}system")] | Annotated[DeveloperMessage, Tag(f"{TAG}developer")] | Annotated[UserMessage, Tag(f"{TAG}user")] | Annotated[AssistantMessage, Tag(f"{TAG}assistant")] | Annotated[ToolMessage, Tag(f"{TAG}tool")],
                    Discriminator(_role, custom_error_type="invalid_role",
                                  custom_error_message="each message needs a \"role\": one of "
                                                       "system, developer, user, assistant")]

_StopList = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_STOP)]
Stop = Annotated[Annotated[str, Tag(f"{TAG}string")] | Annotated[_StopList, Tag(f"{TAG}array")],
                 Discriminator(_kind, custom_error_type="invalid_stop",
                               custom_error_message=f"stop must be a string or an array of up to {MAX_STOP} strings")]


class StreamOptions(_Strict):
    include_usage: StrictBool | None = None
    include_obfuscation: StrictBool | None = None  # a side-channel padding option: accepted, no padding is sent


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise _unsupported(f"{value!r} is not supported: answers are plain text")
        return value


# ---- the request ---------------------------------------------------------------------------------

# Fields the server supports only at their "off" value: (is it off?, why not otherwise).
_NO_TOOLS = (lambda v: v in ("none", "auto"), "this server has no tools (only \"none\" or \"auto\")")
OFF_ONLY: dict[str, tuple[Any, str]] = {
    "n": (lambda v: v == 1, "this server returns exactly one choice (n=1)"),
    "frequency_penalty": (lambda v: v == 0, "only 0: use the repetition_penalty extension to discourage repeats"),
    "presence_penalty": (lambda v: v == 0, "only 0: use the repetition_penalty extension to discourage repeats"),
    "logprobs": (lambda v: not v, "log-probabilities are not returned"),
    "top_logprobs": (lambda v: False, "log-probabilities are not returned"),
    "logit_bias": (lambda v: not v, "token biases are not applied"),
    "tools": (lambda v: not v, "this server has no tools"),
    "functions": (lambda v: not v, "this server has no tools"),
    "tool_choice": _NO_TOOLS,
    "function_call": _NO_TOOLS,
    "modalities": (lambda v: v in ([], ["text"]), "answers are text only (modalities [\"text\"])"),
    "audio": (lambda v: not v, "answers are text only"),
    "prediction": (lambda v: not v, "predicted outputs are not used"),
    "reasoning_effort": (lambda v: False, "this server does not implement it"),
    "verbosity": (lambda v: False, "this server does not implement it"),
    "web_search_options": (lambda v: not v, "this server does not search the web"),
    "moderation": (lambda v: not v, "this server does not implement it"),
    "store": (lambda v: not v, "nothing is stored"),
}


class ChatCompletionRequest(_Strict):
    """The body of POST /v1/chat/completions (see the module docstring for what each field does here).

    Validate with `parse_request(body, max_conversation_chars=...)`.
    """

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    model: Annotated[str, Field(min_length=1, max_length=256)]

    # supported
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] | None = None
    temperature: Annotated[Finite, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Finite, Field(ge=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None  # torch takes a 64-bit seed
    stop: Stop | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None

    # accepted: they label or route a request and do not change its answer
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    parallel_tool_calls: StrictBool | None = None  # only meaningful with tools, of which there are none

    # supported only at their "off" value
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    frequency_penalty: Annotated[Finite, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[Finite, Field(ge=-2, le=2)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, int] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    store: StrictBool | None = None

    # extensions (vLLM-style sampling knobs; which passages the answer is built from)
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[Finite, Field(gt=0, le=10)] | None = None
    retrieval_mode: Literal["dense", "bm25", "hybrid"] | None = None
    retrieval_top_k: Annotated[int, Field(ge=1, le=20)] | None = None

    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list[Any], info: ValidationInfo) -> list[Any]:
        limit = (info.context or {}).get("max_conversation_chars", DEFAULT_MAX_CONVERSATION_CHARS)
        total = sum(len(m.text) for m in messages if isinstance(m, _Message))
        if total > limit:
            raise PydanticCustomError(
                "conversation_too_long",
                "the conversation is {total} characters long; the limit is {limit}: start a new conversation "
                "or send fewer earlier turns", {"total": f"{total:,}", "limit": f"{limit:,}"})
        if not isinstance(messages[-1], UserMessage):
            raise PydanticCustomError("last_message_not_user",
                                      "the last message must be the user's question (role \"user\")")
        return messages

    @field_validator(*OFF_ONLY)
    @classmethod
    def _off_only(cls, value: Any, info: ValidationInfo) -> Any:
        is_off, why = OFF_ONLY[info.field_name]
        if value is not None and not is_off(value):
            shown = f"{value!r} is not" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else "not"
            raise _unsupported(f"{shown} supported: {why}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            raise RequestError("max_tokens and max_completion_tokens disagree: send one of them", "max_tokens")
        if self.stream_options is not None and not self.stream:
            raise RequestError("stream_options is only allowed with \"stream\": true", "stream_options")
        return self

    # ---- what the pipeline needs ----

    @property
    def question(self) -> str:
        """The last message's text (validation guarantees it is the user's)."""
        return self.messages[-1].text

    @property
    def history(self) -> list[dict[str, str]]:
        """Earlier messages as {"role", "content"} text, in order (system/developer ones are instructions)."""
        return [{"role": m.role, "content": m.text} for m in self.messages[:-1]]

    @property
    def answer_tokens(self) -> int | None:
        """max_completion_tokens, else max_tokens, else None (the server's default)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class RequestError(ValueError):
    """A request the server refuses: a message for the client and the parameter it is about (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _param(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a request path, e.g. ('messages', 0, '~user', 'content') -> messages[0].content."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(TAG):
            out += f".{part}" if out else part
    return out


def _request_error(exc: ValidationError) -> RequestError:
    """The first problem of a failed validation as one message naming the parameter."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    if err["type"] == "json_invalid":
        return RequestError(f"the request body is not valid JSON: {err['msg'].removeprefix('Invalid JSON: ')}",
                            None, "invalid_json")
    if err["type"] == "model_type":
        return RequestError("the request body must be a JSON object", None, "invalid_json")
    if err["type"] == "value_error" and isinstance(err.get("ctx", {}).get("error"), RequestError):
        return err["ctx"]["error"]
    param = _param(err["loc"])
    if err["type"] == "extra_forbidden":
        return RequestError(f"unrecognized request argument: {param}", param, "unknown_parameter")
    if err["type"] == "missing":
        return RequestError(f"{param}: required", param, "missing_required_parameter")
    code = "unsupported_parameter" if err["type"] == "unsupported" else "invalid_value"
    message = err["msg"].removeprefix("Value error, ")
    return RequestError(f"{param}: {message}" if param else message, param or None, code)


def parse_request(body: bytes, *, max_conversation_chars: int = DEFAULT_MAX_CONVERSATION_CHARS) -> ChatCompletionRequest:
    """Validate a raw JSON body against the Chat Completions request model.

    :param body: the request body (UTF-8 JSON).
    :param max_conversation_chars: cap on the text of all messages together.
    :returns: the validated request.
    :raises RequestError: the first problem found, naming the parameter (OpenAI's `param`).
    """
    try:
        return ChatCompletionRequest.model_validate_json(
            body, context={"max_conversation_chars": max_conversation_chars})
    except ValidationError as exc:
        raise _request_error(exc) from None
