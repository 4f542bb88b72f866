"""Options as pydantic models: one validation path, and one line naming the flag when a value is bad.

Generation parameters (rag.generation.base.GenerationParams), `raft generate`'s RaftConfig, `raft train`'s
TrainConfig and `raft course`'s CourseOptions are `Options`: each field says its type, its range
(`Field(ge=..., le=...)`) and what it means (`description`), pydantic checks them when the object is made and
when a field is set, and a bad value raises the model's `error_class` (a RagError: the CLI, the server and the
app show it as one line) instead of pydantic's multi-line ValidationError. The CLI builds its flags from the
same fields (rag.common.click_options), so a default, a range and a help text are written once.

Written here, not taken from a library: pydantic gives the checks and click the flags; what joins them (the
flag a field is set by, a range said the way `--help` says it) is this project's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from rag.errors import RagError


def flag_of(name: str, flags: Mapping[str, str] | None = None) -> str:
    """The CLI flag of option `name`: `flags[name]`, else `--` and the name with dashes (max_new_tokens ->
    --max-new-tokens)."""
    return (flags or {}).get(name) or "--" + name.replace("_", "-")


def bounds(info: FieldInfo) -> tuple[Any, bool, Any, bool]:
    """(low, low_inclusive, high, high_inclusive) of a field's `Field(ge/gt/le/lt)`; None for an open end."""
    low = high = None
    low_in = high_in = True
    for m in info.metadata:
        if isinstance(m, Ge):
            low, low_in = m.ge, True
        elif isinstance(m, Gt):
            low, low_in = m.gt, False
        elif isinstance(m, Le):
            high, high_in = m.le, True
        elif isinstance(m, Lt):
            high, high_in = m.lt, False
    return low, low_in, high, high_in


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a `Literal[...]` annotation (also inside `Literal[...] | None`); () for any other type."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(v for arg in get_args(annotation) if get_origin(arg) is Literal for v in get_args(arg))


def range_text(info: FieldInfo) -> str | None:
    """A field's range as a reader says it: ">= 1", "> 0", "in [0, 1]", "in (0, 1]", "in [0, 1)"; None if it has none."""
    low, low_in, high, high_in = bounds(info)
    if low is not None and high is not None:
        return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
    if low is not None:
        return f"{'>=' if low_in else '>'} {low}"
    if high is not None:
        return f"{'<=' if high_in else '<'} {high}"
    return None


def option_error(exc: ValidationError, model: type[BaseModel], flags: Mapping[str, str] | None = None,
                 prefix: str = "") -> str:
    """One line for the first problem of a ValidationError of `model`: the flag, the value and what is allowed.

    :param exc: raised by pydantic while making or changing a `model`.
    :param model: the model class (its fields give the ranges).
    :param flags: field name -> flag, for fields whose flag is not their name with dashes.
    :param prefix: put before the line (e.g. "invalid generation setting: ").
    :returns: e.g. "--lora-dropout must be in [0, 1), got 1.0"; for a problem of several fields at once (a model
        validator), its own message.
    """
    err = exc.errors()[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"]:
        return prefix + message
    name = str(err["loc"][0])
    flag = flag_of(name, flags)
    info = model.model_fields.get(name)
    value = err.get("input")
    if err["type"].startswith(("greater_than", "less_than")) and info is not None and range_text(info):
        return f"{prefix}{flag} must be {range_text(info)}, got {value!r}"
    if err["type"] in ("int_parsing", "int_type", "float_parsing", "float_type", "int_from_float"):
        kind = "a whole number" if err["type"].startswith("int") else "a number"
        return f"{prefix}{flag} must be {kind}, got {value!r}"
    if err["type"] == "missing":
        return f"{prefix}{flag} is required"
    if err["type"] == "extra_forbidden":
        return f"{prefix}unknown option {name!r}: the options are {', '.join(model.model_fields)}"
    if err["type"] == "literal_error" and info is not None and (choices := literal_choices(info.annotation)):
        allowed = str(choices[0]) if len(choices) == 1 else "one of " + ", ".join(map(str, choices))
        return f"{prefix}{flag} must be {allowed}, got {value!r}"
    return f"{prefix}invalid {flag} {value!r}: {message}" if "input" in err else f"{prefix}invalid {flag}: {message}"


class Options(BaseModel):
    """A set of options checked by pydantic on creation and on every change; a bad value raises `error_class`
    with one line naming the flag (`option_error`), never a ValidationError.

    Subclasses declare fields with `Field(default, ge=..., le=..., description=...)`, may set `FLAGS` (field ->
    flag, for a flag that is not the name with dashes), `ERROR_PREFIX` and `error_class`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: field -> CLI flag, where the flag is not `--` + the name with dashes
    FLAGS: ClassVar[dict[str, str]] = {}
    #: put before every error message
    ERROR_PREFIX: ClassVar[str] = ""
    #: what a bad value raises (a RagError subclass: the CLI, the server and the app show it as one line)
    error_class: ClassVar[type[RagError]] = RagError

    def __init__(self, **data: Any) -> None:
        """Check `data` (pydantic).

        :raises RagError: (`error_class`) one line naming the first bad option, its value and what is allowed.
        """
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise self.error_class(option_error(exc, type(self), self.FLAGS, self.ERROR_PREFIX)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise self.error_class(option_error(exc, type(self), self.FLAGS, self.ERROR_PREFIX)) from None

    def replace(self, **changes: Any) -> Any:
        """A checked copy with `changes` (what dataclasses.replace was; pydantic's model_copy does not check).

        :raises RagError: (`error_class`) a changed value is out of range.
        """
        return type(self)(**{**{k: getattr(self, k) for k in type(self).model_fields}, **changes})
