"""Click flags built from an options model's fields, and hidden deprecated spellings of a flag.

`model_options(Model, names)` gives each field one flag: its name with dashes (or the model's FLAGS), its
type and range (`Field(ge, le)` -> click.IntRange / FloatRange, `Literal` -> click.Choice, bool -> a flag), its
default and its description as the help text. So `--help` shows the default and the range the model checks,
written once. `deprecated_alias` keeps an old spelling of a flag working, hidden from `--help`, with a one-line
warning on stderr.

Written here: click takes its options as decorators and pydantic describes fields; nothing joins the two
(click-pydantic style packages build whole commands, not some flags of a hand-written one).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union, get_args, get_origin

import click
from click.core import ParameterSource
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rag.common.options import bounds, flag_of, literal_choices, range_text


def _base_type(annotation: Any) -> Any:
    """`int` for `int | None`, the Literal for `Literal[...] | None`; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _click_type(info: FieldInfo, checked: bool) -> Any:
    """The click type of a field: with its range when `checked` (click refuses a value outside it)."""
    base = _base_type(info.annotation)
    if get_origin(base) is Literal:
        return click.Choice([str(v) for v in literal_choices(base)])
    low, low_in, high, high_in = bounds(info)
    ranged = checked and (low is not None or high is not None)
    if base is int:
        return click.IntRange(low, high, min_open=not low_in, max_open=not high_in) if ranged else int
    if base is float:
        return click.FloatRange(low, high, min_open=not low_in, max_open=not high_in) if ranged else float
    return str


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None if info.default is PydanticUndefined else info.default


def model_option(model: type[BaseModel], name: str, *, given_only: bool = False, checked: bool = True,
                 decls: Iterable[str] = (), help: str | None = None) -> Callable[[Callable], Callable]:
    """One click option for field `name` of `model`, passed to the command as the keyword argument `name`.

    :param model: the options model (its FLAGS, if any, name the flags that are not the field's name with dashes).
    :param name: the field.
    :param given_only: the option's value is None unless given (the command fills in the model's default,
        e.g. from a config); `--help` still shows the model's default.
    :param checked: click checks the range (a bad value is a usage error); False: the model checks it (one
        line through the error funnel), and `--help` shows the range in the text.
    :param decls: the flags to use instead of the model's (e.g. ("-k", "--top-k")).
    :param help: the help text instead of the field's description.
    :returns: a click decorator.
    """
    info = model.model_fields[name]
    flags = list(decls) or [flag_of(name, getattr(model, "FLAGS", None))]
    default = _default(info)
    text = help if help is not None else (info.description or "")
    kind = _click_type(info, checked)
    # what click does not show itself, as click shows it: "[default: 3; in [1, 20]]"
    said = [f"default: {default}" for _ in [0] if given_only and default is not None]
    said += [rng for rng in [range_text(info)] if rng and not checked]
    options: dict[str, Any] = {"help": f"{text}  [{'; '.join(said)}]" if said else text}
    if _base_type(info.annotation) is bool:
        options.update(is_flag=True, default=None if given_only else default, show_default=not given_only)
    elif given_only:  # None reaches the command: the default it stands for is said in the text
        options.update(type=kind, default=None)
    else:
        options.update(type=kind, default=default, show_default=default is not None)
    return click.option(*flags, name, **options)


def model_options(model: type[BaseModel], names: Iterable[str], **kw: Any) -> Callable[[Callable], Callable]:
    """Click options for the fields `names` of `model`, in that order in `--help` (see `model_option`).

    :param kw: passed to every `model_option` (given_only=, checked=).
    """
    names = list(names)

    def decorate(f: Callable) -> Callable:
        for name in reversed(names):
            f = model_option(model, name, **kw)(f)
        return f

    return decorate


def deprecated_alias(old: str, new: str, dest: str, prog: str) -> Callable[[Callable], Callable]:
    """Keep the flag `old` as a hidden spelling of `new` (keyword argument `dest`), with a one-line warning.

    Given alone, its value becomes `dest`'s and stderr gets "<prog>: <old> is deprecated: use <new> (the same
    setting)"; given with `new`, it is a usage error (exit 2). Put it above the `new` option's decorator.

    :param old: the deprecated flag, e.g. "--max-tokens".
    :param new: the documented flag of the same setting, e.g. "--max-new-tokens".
    :param dest: the command's keyword argument of `new`.
    :param prog: the command name for the warning ("rag", "raft").
    """
    hidden = f"{dest}__deprecated_alias"

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(hidden, None)
            if value is not None:
                ctx = click.get_current_context()
                if ctx.get_parameter_source(dest) not in (ParameterSource.DEFAULT, None):
                    raise click.UsageError(f"{old} and {new} are the same setting: give {new} only")
                click.echo(f"{prog}: {old} is deprecated: use {new} (the same setting)", err=True)
                kwargs[dest] = value
            return f(*args, **kwargs)

        # the documented option's type (and range), so click checks the old spelling the same way
        target = next((p for p in getattr(f, "__click_params__", []) if p.name == dest), None)
        return click.option(old, hidden, type=target.type if target is not None else None, default=None, hidden=True,
                            help=f"Deprecated spelling of {new}.")(wrapper)

    return decorate

