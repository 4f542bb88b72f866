"""Multiple-choice questions: the options a student pasted under the question, and the one the passages support.

Students paste quiz items into a course assistant ("Which of the following…" with options A-D). Each
option gets two scores, combined as the grounded quote choice combines its two (`grounding.combine`:
standardised over the options, `weight` on the retriever):

* support: the retriever's embedder, the option's best cosine with a sentence of the passages given to the
  model (the candidate sentences of `grounding.quote_candidates`, boilerplate excluded, and the options
  themselves excluded where the course holds the quiz item: `restated_options`): how directly the course
  states it;
* model: the option's log-likelihood per UTF-8 byte as the start of the model's reply to the RAG prompt, as
  lm-evaluation-harness scores options (acc_norm, `rag.evaluation.loglik`).

Measured on the dev quiz (the course without its quizzes, 17 multiple-choice items, bundled 135M model,
`python eval/answers_benchmark.py --modes ""`): closed book 0.529; the model's scores with the passages
0.471, so the passages did not help the model; CAD's contrast of the two (Shi et al. 2023, "Trusting Your
Evidence", alpha 0.5-4) 0.353-0.412; support alone 0.647; support and model mixed at weight 0.25-0.75
0.471-0.647. So the default weight is 1.0: the option the passages state wins, and the model is not
asked (a stronger model can be given a share with `choice_retriever_weight`). 17 items are few: one item is
5.9 points (README "Answers").

Parsing is by hand because no library reads options from free text; the markers are the ones quiz
exports and students use: lettered options (`A.`, `b)`, `(C)`), check boxes (`- [ ]`, `- [x]`), ballot
boxes (☐ ☒), and plain bullets under a stem that ends in `?` or `:`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz import fuzz

from rag.answering.grounding import combine, quote_candidates
from rag.generation.base import Generator, Messages

#: The support's share against the model's option scores (module docstring: measured on the dev quiz).
RETRIEVER_WEIGHT = 1.0
MIN_OPTIONS = 2
MAX_OPTIONS = 8

_LETTERED = re.compile(r"^\s*(?:[-*+•]\s+)?\(?([A-Ha-h])[.):](?:\s+|$)(.*)$")
_BOXED = re.compile(r"^\s*(?:[-*+•]\s+)?(?:\[[ xX]\]|[☐☒☑])\s*(.+)$")
_BULLET = re.compile(r"^\s*[-*+•]\s+(.+)$")


def search_wordings(stem: str, options: Sequence[str]) -> list[str]:
    """What a quiz item is searched as (`Retriever.search_many` fuses the rankings): its stem, and its stem
    followed by its options, one a line. On the independent courses this raised MRR@10 by +0.039
    [+0.019, +0.061] over the stem alone (README, "Retrieval quality").

    :param stem: the question without its options.
    :param options: the option texts.
    :returns: the wordings, the stem first.
    """
    return [stem, "\n".join([stem, *options])]


@dataclass(frozen=True)
class Choice:
    """A multiple-choice question read from a student's text.

    :param stem: the question without its options (whitespace kept as typed).
    :param options: the option texts, markers stripped, in the order given.
    :param labels: the label of each option as the student wrote it ("A", "B"…; "1", "2"… when unlabelled).
    """

    stem: str
    options: tuple[str, ...]
    labels: tuple[str, ...]


def parse_choice(question: str) -> Choice | None:
    """The options listed at the end of `question`, or None when it is not a multiple-choice question.

    Options are the last run of at least MIN_OPTIONS lines of one kind (lettered, boxed, or bulleted under
    a stem ending in `?` or `:`); blank lines inside the run are allowed, and text after the run (an
    instruction such as "Choose one.") stays in the stem.

    :param question: the question as typed, possibly several lines.
    :returns: the Choice, or None (no options, a single option, more than MAX_OPTIONS, or no stem).
    """
    lines = question.splitlines()
    for pattern, needs_stem_end in ((_LETTERED, False), (_BOXED, False), (_BULLET, True)):
        run: list[int] = []
        for i, line in enumerate(lines):
            if pattern.match(line):
                if run and any(lines[j].strip() for j in range(run[-1] + 1, i)):
                    run = []  # text between option lines: a new run starts here
                run.append(i)
        if len(run) < MIN_OPTIONS or len(run) > MAX_OPTIONS:
            continue
        stem_lines = lines[: run[0]] + lines[run[-1] + 1:]
        stem = "\n".join(stem_lines).strip()
        head = "\n".join(lines[: run[0]]).strip()
        if not head or (needs_stem_end and not head.endswith(("?", ":"))):
            continue
        options, labels = [], []
        for n, i in enumerate(run, start=1):
            m = pattern.match(lines[i])
            assert m is not None
            text = (m.group(2) if pattern is _LETTERED else m.group(1)).strip()
            if not text:
                break
            options.append(text)
            labels.append(m.group(1).upper() if pattern is _LETTERED else str(n))
        else:
            if len({o.lower() for o in options}) == len(options):
                return Choice(stem, tuple(options), tuple(labels))
    return None


_LABEL = re.compile(r"^\s*(?:[-*+•]\s+)?(?:\(?[A-Ha-h][.):]\s+|\[[ xX]\]\s*|[☐☒☑]\s*)")
#: A passage sentence this similar (rapidfuzz ratio, 0-100) to an option is that option restated.
RESTATED = 90.0
#: ... and so is one that holds an option (or the stem) of at least this many characters word for word.
MIN_CONTAINED = 30


def restated_options(passages: Sequence[str], options: Sequence[str]) -> frozenset[str]:
    """The candidate sentences of `passages` that are one of `options` restated: the quiz item itself, when
    the course holds it. Such a sentence supports every option equally well (each is in it word for word),
    so it is neither support nor a quote. Pass the stem among `options` to exclude the restated question too.

    :returns: the sentences as `grounding.quote_candidates` returns them; compare after stripping an option
        label (`A.`, `[ ]`, ☐) and case, by rapidfuzz's ratio >= RESTATED.
    """
    wanted = [" ".join(o.split()).lower() for o in options]
    out = set()
    for text in passages:
        for cand in quote_candidates(text, max_candidates=0):
            bare = " ".join(_LABEL.sub("", cand).split()).lower()
            if any(fuzz.ratio(bare, o) >= RESTATED or (len(o) >= MIN_CONTAINED and o in bare) for o in wanted):
                out.add(cand)
    return frozenset(out)


def option_support(options: Sequence[str], passages: Sequence[str], embedder: Any,
                   exclude: Collection[str] = ()) -> list[float]:
    """Each option's best cosine with a candidate sentence of `passages` (0.0 for all when none has one).

    :param options: the option texts.
    :param passages: the passage texts given to the model.
    :param embedder: the retriever's embedder (`encode(list[str]) -> (n, dim)` unit vectors).
    :param exclude: sentences never to count (`grounding.boilerplate_sentences`).
    :returns: one cosine in [-1, 1] per option.
    """
    sentences = [c for text in passages for c in quote_candidates(text, exclude=exclude)]
    if not sentences or not options:
        return [0.0] * len(options)
    vecs = np.asarray(embedder.encode([*options, *sentences]), dtype=float)
    sims = vecs[: len(options)] @ vecs[len(options):].T
    return [float(x) for x in sims.max(axis=1)]


def option_logprobs(generator: Generator, messages: Messages, options: Sequence[str]) -> list[float]:
    """Each option's summed log-probability per UTF-8 byte as the start of the assistant's reply to `messages`.

    One prompt pass shared by all options (`Generator.continuation_logprobs`); lm-evaluation-harness's
    acc_norm normalisation (`rag.evaluation.loglik` explains why bytes).

    :raises GeneratorError: the backend gives no log-probabilities, or the prompt does not fit its window.
    """
    sums = generator.continuation_logprobs(messages, "", list(options))
    return [total / max(1, len(text.encode("utf-8"))) for (total, _), text in zip(sums, options)]


@dataclass
class Picked:
    """The chosen option and the scores that chose it (one float per option, in the given order)."""

    index: int
    scores: list[float]
    support: list[float]
    model: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: index and the score lists, rounded (model None when the model was not asked)."""
        return {"index": self.index, "scores": [round(s, 5) for s in self.scores],
                "support": [round(s, 5) for s in self.support],
                "model": None if self.model is None else [round(s, 5) for s in self.model]}


def pick_option(generator: Generator, messages: Messages, options: Sequence[str], passages: Sequence[str],
                embedder: Any, weight: float = RETRIEVER_WEIGHT, exclude: Collection[str] = ()) -> Picked:
    """The option the passages support most: support and model scores combined (`grounding.combine`).

    :param generator: the chat model; asked only when weight < 1 and it `supports_logprobs`.
    :param messages: the RAG prompt (passages + question) the model sees.
    :param options: the option texts (each non-empty).
    :param passages: the passage texts of that prompt.
    :param embedder: the retriever's embedder.
    :param weight: the support's share, 0..1 (1.0 = support alone).
    :param exclude: sentences never to count as support (`grounding.boilerplate_sentences`); the options
        restated in the passages (`restated_options`) never count either.
    :returns: Picked (index of the best option, its scores).
    :raises GeneratorError: when the model fails while scoring.
    """
    support = option_support(options, passages, embedder, frozenset(exclude) | restated_options(passages, options))
    model = (option_logprobs(generator, messages, options)
             if weight < 1.0 and generator.supports_logprobs else None)
    scores = [float(x) for x in combine(model, support, weight)]
    best = max(range(len(options)), key=scores.__getitem__)
    return Picked(best, scores, support, model)


__all__ = ["RETRIEVER_WEIGHT", "Choice", "parse_choice", "restated_options", "option_support", "option_logprobs", "Picked", "pick_option"]
