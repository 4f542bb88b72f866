"""Multiple-choice questions: the options a student pasted under the question, and the ones the passages support.

Students paste quiz items into a course assistant ("Which of the following…" with options A-D, true/false
statements, "select all that apply", fill-in-the-blank stems). Each option is turned into the statement a
student makes by choosing it (`claim`: written into the stem's blank, else after the stem; under a question
stem, "Which …?", the option alone, `support_text`), and that text is scored against the sentences of the
passages given to the model (`claim_support`: the retriever's embedder,
its best cosine with a candidate sentence of `grounding.quote_candidates`, boilerplate and the quiz item
restated in the course excluded, `restated_options`). Then the item's kind decides:

* an "all / both of the above" option (`option_kind`) wins when every plain option is about as well stated
  as the best one (support spread <= ALL_MARGIN); a "none of the above" option wins when no plain option
  reaches NONE_FLOOR; otherwise the best-supported plain option wins;
* "select all that apply" (`asks_for_several`) chooses the best option and any within SET_MARGIN of it;
* true/false (`is_true_false`): the embedder cannot tell a statement from its altered copy, so the model
  reads the statement's closest sentences and its preference for "True" over "False" is compared with its
  preference closed book (the passages' effect, as context-aware decoding contrasts the two; Shi et al.
  2023); a model without log-probabilities falls back to the claims.

Why these, measured on the two independent courses' own quizzes (265 items, bundled 135M model, the
product's passages; `python -m eval.choices_benchmark`, docs in docs/results/choices.md and
eval/results/courses/choices_benchmark.md): the bare option's support (the previous method) was right on
0.434 pooled against closed book's 0.355; the model's option scores with the passages on 0.366, so the small
model does not read the passages when it scores options, and mixing them in lowered every combination
tried; the claims raised it on both courses, except under question stems, where stem + option is mostly
the question's words (the same for every option) and the bare option scored as well (0.41-0.43 either way on
the 89 such items) and chose the passage's own answer where the claim did not ("What does LoRA freeze?"). The margins were measured across courses: ALL_MARGIN chosen on
one course and applied to the other kept its accuracy both ways; for sets, treating the quizzes' items as
"select all that apply" (an "all of the above" key is the set of every plain option), every margin wider
than 0 lost, so SET_MARGIN is 0 until a quiz with such items says otherwise.

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

from rag.answering.grounding import FINAL_MARKS, combine, quote_candidates
from rag.answering.prompts import document_messages
from rag.generation.base import Generator, Messages

#: The support's share against the model's option scores (module docstring: measured on the dev quiz).
RETRIEVER_WEIGHT = 1.0
MIN_OPTIONS = 2
MAX_OPTIONS = 8

#: An "all of the above" option wins when every plain option's support is within this cosine of the best
#: one's (module docstring: measured across the two independent courses).
ALL_MARGIN = 0.3
#: A "none of the above" option wins when no plain option's support reaches this cosine (the 5th percentile
#: of the right options' support on the independent courses).
NONE_FLOOR = 0.48
#: "Select all that apply": the options within this cosine of the best one are chosen with it (measured: 0,
#: the best option alone, won at every wider margin tried).
SET_MARGIN = 0.0

_ALL_OPTION = re.compile(r"^\s*(?:both|all)\b|\b(?:[a-d] and [a-d]|of the above|of these|the above)\b", re.IGNORECASE)
_NONE_OPTION = re.compile(r"^\s*none\b|\bneither\b", re.IGNORECASE)
_BLANK = re.compile(r"_{2,}|…|\.{3}")
_MULTI = re.compile(r"\b(?:select|choose|check|mark|pick|tick)\s+(?:all|every|each|two|three|four|2|3|4)\b|"
                    r"\ball that apply\b|\(\s*(?:two|three|2|3)\s+answers?\s*\)", re.IGNORECASE)
_LETTERED = re.compile(r"^\s*(?:[-*+•]\s+)?\(?([A-Ha-h])[.):](?:\s+|$)(.*)$")
_BOXED = re.compile(r"^\s*(?:[-*+•]\s+)?(?:\[[ xX]\]|[☐☒☑])\s*(.+)$")
_BULLET = re.compile(r"^\s*[-*+•]\s+(.+)$")


def search_wordings(stem: str, options: Sequence[str]) -> list[str]:
    """What a quiz item is searched as (`Retriever.search_many` fuses the rankings): its stem, and its stem
    followed by its options, one a line. On the independent courses this raised MRR@10 by +0.039
    [+0.019, +0.061] over the stem alone (docs/results/retrieval.md).

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
    :param multi: the stem asks for every right option ("select all that apply", "choose two", "which of
        these are…").
    """

    stem: str
    options: tuple[str, ...]
    labels: tuple[str, ...]
    multi: bool = False


def asks_for_several(stem: str) -> bool:
    """Whether a stem asks for every right option ("Select all that apply", "Choose two", "(2 answers)")."""
    return bool(_MULTI.search(stem))


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
                return Choice(stem, tuple(options), tuple(labels), asks_for_several(stem))
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


def option_kind(option: str) -> str:
    """What an option stands for: "all" (every other option: "all of the above", "both", "a and b"), "none"
    ("none of the above"), or "plain" (a statement of its own).

    :param option: the option text, marker stripped.
    :returns: "all", "none" or "plain".
    """
    if _NONE_OPTION.search(option):
        return "none"
    return "all" if _ALL_OPTION.search(option) else "plain"


def is_true_false(options: Sequence[str]) -> bool:
    """True for a true/false item: exactly two options, "true" and "false" (or "yes" and "no"), any case."""
    return len(options) == 2 and {o.strip().strip(".").lower() for o in options} in ({"true", "false"}, {"yes", "no"})


def claim(stem: str, option: str) -> str:
    """The statement a student makes by choosing `option`: the option written into the stem's blanks
    ("A perceptron is a ___ model" + "binary classification"; several blanks take a comma-separated option
    in order), else the stem followed by the option ("The AI winter occurred in" + "the 1970s").

    :param stem: the question without its options.
    :param option: one option text.
    :returns: one sentence-like claim.
    """
    blanks = _BLANK.findall(stem)
    if not blanks:
        return f"{stem.strip()} {option.strip()}"
    parts = [p.strip() for p in option.split(",")]
    if len(blanks) == 1 or len(parts) != len(blanks):
        parts = [option.strip()] * len(blanks)
    out = stem.strip()
    for part in parts:
        out = _BLANK.sub(lambda _m, part=part: part, out, count=1)
    return out


def support_text(stem: str, option: str) -> str:
    """What an option is scored as against the passages: its claim (`claim`) under a completion or
    fill-in-the-blank stem; the option alone under a question ("Which …?", "What does …?"), where stem +
    option is mostly the question's words, the same for every option (measured: module docstring).

    :param stem: the question without its options.
    :param option: one option text.
    :returns: the text to embed.
    """
    if not _BLANK.search(stem) and stem.strip().endswith("?"):
        return option.strip()
    return claim(stem, option)


def claim_support(claims: Sequence[str], passages: Sequence[str], embedder: Any,
                  exclude: Collection[str] = ()) -> list[float]:
    """Each claim's best cosine with a candidate sentence of `passages` (0.0 for all when none has one).

    :param claims: statements (`claim`), or bare option texts.
    :param passages: the passage texts given to the model.
    :param embedder: the retriever's embedder (`encode(list[str]) -> (n, dim)` unit vectors).
    :param exclude: sentences never to count (boilerplate, the quiz item restated).
    :returns: one cosine in [-1, 1] per claim.
    """
    sentences = [c for text in passages for c in quote_candidates(text, exclude=exclude)]
    if not sentences or not claims:
        return [0.0] * len(claims)
    vecs = np.asarray(embedder.encode([*claims, *sentences]), dtype=float)
    sims = vecs[: len(claims)] @ vecs[len(claims):].T
    return [float(x) for x in sims.max(axis=1)]


def option_support(options: Sequence[str], passages: Sequence[str], embedder: Any,
                   exclude: Collection[str] = ()) -> list[float]:
    """Each bare option's best cosine with a candidate sentence of `passages` (`claim_support` of the options
    alone, without the stem): the support the product used before claims, kept as the evaluation's baseline."""
    return claim_support(options, passages, embedder, exclude)


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
    """The chosen options and the scores that chose them (one float per option, in the given order).

    :param chosen: indexes of the chosen options, ascending (one for a single-answer item).
    :param scores: the combined score of each option (an "all"/"none" option scores as its rule decided).
    :param support: each option's claim support (cosine).
    :param model: the model's per-byte log-probability of each option, or None when it was not asked.
    :param rule: how the choice was made: "best", "all", "none", "set", "true-false".
    """

    chosen: tuple[int, ...]
    scores: list[float]
    support: list[float]
    model: list[float] | None
    rule: str = "best"

    @property
    def index(self) -> int:
        """The first chosen option."""
        return self.chosen[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: chosen, index, rule and the score lists, rounded (model None when not asked)."""
        return {"index": self.index, "chosen": list(self.chosen), "rule": self.rule,
                "scores": [round(s, 5) for s in self.scores], "support": [round(s, 5) for s in self.support],
                "model": None if self.model is None else [round(s, 5) for s in self.model]}


def _decide(choice: Choice, scores: np.ndarray, support: np.ndarray) -> tuple[tuple[int, ...], str]:
    """The chosen options from the combined scores (plain options) and the raw supports (the rules'
    margins are in cosine units): module docstring."""
    kinds = [option_kind(o) for o in choice.options]
    plain = [i for i, k in enumerate(kinds) if k == "plain"]
    if not plain:
        return (int(np.argmax(scores)),), "best"
    best = max(plain, key=lambda i: scores[i])
    spread = float(support[plain].max() - support[plain].min())
    if "all" in kinds and len(plain) >= 2 and spread <= ALL_MARGIN:
        return (kinds.index("all"),), "all"
    if "none" in kinds and float(support[plain].max()) < NONE_FLOOR:
        return (kinds.index("none"),), "none"
    if choice.multi:
        top = float(support[best])
        chosen = sorted({best, *(i for i in plain if support[i] >= top - SET_MARGIN)})
        return tuple(chosen), "set"
    return (best,), "best"


#: Evidence sentences (closest to the statement) the model reads for a true/false item.
TRUE_FALSE_EVIDENCE = 3


def true_false_messages(statement: str, evidence: Sequence[str]) -> Messages:
    """The prompt a true/false item is judged with: the evidence sentences (none: closed book), the statement,
    and the request to answer True or False."""
    context = "Course text:\n" + "\n".join(evidence) + "\n\n" if evidence else ""
    where = " according to the course text" if evidence else ""
    return [{"role": "user", "content": f"{context}Statement: {statement.strip()}\n\n"
                                        f"Is the statement true or false{where}? Answer True or False."}]


def true_false_query(generator: Generator, statement: str, evidence: Sequence[str],
                     answers: Sequence[str]) -> tuple[Messages, str, list[str]]:
    """How `generator` is asked a true/false item, in the conversation it was tuned on: (messages, the start
    of its reply, the answers scored as continuations of that start).

    A chat model reads `true_false_messages` and its first word is scored. A RAFT-tuned model (prompt_format
    "raft") was trained to reason, then write its final answer after `<ANSWER>:`: asked in chat form its
    first word is the start of reasoning, not an answer, so it gets the RAFT student format (the evidence as
    `<DOCUMENT>` blocks, then the question) and its answer is scored right after the marker.
    """
    if generator.prompt_format == "raft":
        question = f"Statement: {statement.strip()}\nIs the statement true or false? Answer {answers[0]} or {answers[1]}."
        return document_messages(question, evidence), FINAL_MARKS["raft"], [f" {a}" for a in answers]
    return true_false_messages(statement, evidence), "", list(answers)


def _pick_true_false(generator: Generator, choice: Choice, passages: Sequence[str], embedder: Any,
                     exclude: Collection[str]) -> Picked:
    """A true/false item: the model's preference for each answer given the statement's closest sentences,
    minus its preference closed book (the passages' effect, as context-aware decoding contrasts the two:
    Shi et al. 2023); without log-probabilities, the claims' support."""
    options = list(choice.options)
    sentences = [c for text in passages for c in quote_candidates(text, exclude=exclude)]
    if not sentences or not generator.supports_logprobs:
        support = claim_support([claim(choice.stem, o) for o in options], passages, embedder, exclude)
        return Picked((int(np.argmax(support)),), support, support, None, "true-false")
    vecs = np.asarray(embedder.encode([choice.stem, *sentences]), dtype=float)
    order = np.argsort(-(vecs[1:] @ vecs[0]))[:TRUE_FALSE_EVIDENCE]
    evidence = [sentences[i] for i in sorted(order)]
    answers = ["True", "False"] if options[0].strip().strip(".").lower() in ("true", "false") else ["Yes", "No"]
    read = [t for t, _ in generator.continuation_logprobs(*true_false_query(generator, choice.stem, evidence, answers))]
    prior = [t for t, _ in generator.continuation_logprobs(*true_false_query(generator, choice.stem, (), answers))]
    lean = (read[0] - read[1]) - (prior[0] - prior[1])  # > 0: the passages move the model towards "true"
    first_is_true = options[0].strip().strip(".").lower() in ("true", "yes")
    scores = [lean, -lean] if first_is_true else [-lean, lean]
    sims = [float(vecs[1:][i] @ vecs[0]) for i in order]
    return Picked((int(np.argmax(scores)),), scores, [max(sims)] * 2, [read[0] - read[1]] * 2, "true-false")


def pick_option(generator: Generator, messages: Messages, choice: Choice, passages: Sequence[str],
                embedder: Any, weight: float = RETRIEVER_WEIGHT, exclude: Collection[str] = ()) -> Picked:
    """The option(s) the passages support: each option as a claim (`claim`) scored against the passages'
    sentences (`claim_support`), mixed with the model's option scores when weight < 1 (`grounding.combine`),
    then the rules for "all/both of the above", "none of the above", "select all that apply" and true/false
    (module docstring).

    :param generator: the chat model; asked only when weight < 1 and it declares `supports_logprobs`, or for a
        true/false item when it does.
    :param messages: the RAG prompt (passages + question) the model sees.
    :param choice: the parsed item (stem, options, whether several answers are wanted).
    :param passages: the passage texts of that prompt.
    :param embedder: the retriever's embedder.
    :param weight: the claim support's share, 0..1 (1.0 = support alone).
    :param exclude: sentences never to count as support (boilerplate); the quiz item restated in the passages
        (`restated_options`) never counts either.
    :returns: Picked (the chosen options, their scores, the rule that chose).
    :raises GeneratorError: when the model fails while scoring.
    """
    options = list(choice.options)
    exclude = frozenset(exclude) | restated_options(passages, [*options, choice.stem])
    if is_true_false(options):
        return _pick_true_false(generator, choice, passages, embedder, exclude)
    support = np.asarray(claim_support([support_text(choice.stem, o) for o in options], passages, embedder, exclude))
    model = (option_logprobs(generator, messages, options)
             if weight < 1.0 and generator.supports_logprobs else None)
    scores = np.asarray(combine(model, support, weight), dtype=float)
    chosen, rule = _decide(choice, scores, support)
    return Picked(chosen, [float(x) for x in scores], [float(x) for x in support], model, rule)


__all__ = ["RETRIEVER_WEIGHT", "ALL_MARGIN", "NONE_FLOOR", "SET_MARGIN", "TRUE_FALSE_EVIDENCE", "Choice", "asks_for_several", "parse_choice", "restated_options",
           "option_kind", "is_true_false", "true_false_messages", "true_false_query", "claim", "support_text", "claim_support", "option_support", "option_logprobs", "Picked",
           "pick_option"]
