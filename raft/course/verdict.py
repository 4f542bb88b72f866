"""Whether `raft course` installs the adapter it made: the house rule for a default, applied to one course.

Installing makes the adapter the default model (`model = auto`) on its course, so by default (`if-better`) it
is installed only when it wins where the product uses it, the retrieved setting (the passages rag's retriever
finds; the oracle setting when retrieved was not evaluated), with a paired 95% bootstrap interval of the F1
difference above zero, and loses on no evaluated setting beyond its interval (an interval below zero). Given a
quiz people wrote for the course (`--quiz`), the product's choice on it decides instead: the held-out split is the
teacher's questions, and on an independent course its gain did not transfer to people's (docs/results/raft.md).
`always` installs whatever the evaluation says, `never` keeps it out. The evaluation summary is `raft eval`'s
(raft.evaluate.run_eval), reduced by `evaluation_brief` to what the decision and the user read.
"""

from __future__ import annotations

from typing import Any

PRIMARY_SETTINGS = ("retrieved", "oracle", "distractors", "closed")  # the first one evaluated decides


def evaluation_brief(summary: dict[str, Any], base: str, tuned: str) -> dict[str, Any]:
    """Base against tuned, per setting: F1 with its interval for each, and the paired difference.

    :param summary: raft eval's summary.json (its `results` and `comparison` with `base` as the baseline).
    :param base: the base model's label in it. :param tuned: the tuned model's label.
    :returns: {"questions", "primary", "settings": {setting: {"base_f1", "base_f1_ci", "tuned_f1", "tuned_f1_ci",
        "delta", "delta_ci", "wins", "ties", "losses"}}}.
    """
    pairs = summary["comparison"]["pairs"][tuned]
    settings: dict[str, Any] = {}
    for setting in summary["settings"]:
        b, t, p = summary["results"][base][setting], summary["results"][tuned][setting], pairs[setting]
        settings[setting] = {"base_f1": b["f1"], "base_f1_ci": b["f1_ci"], "tuned_f1": t["f1"],
                             "tuned_f1_ci": t["f1_ci"], "delta": p["mean_delta"], "delta_ci": p["ci"],
                             "wins": p["wins"], "ties": p["ties"], "losses": p["losses"]}
    primary = next(s for s in PRIMARY_SETTINGS if s in settings)
    return {"questions": summary["questions"], "primary": primary, "settings": settings}


def decide(brief: dict[str, Any], policy: str, quiz: dict[str, Any] | None = None) -> tuple[bool, str]:
    """(install?, why) for the evaluation `brief` under `policy` (if-better, always, never).

    :param quiz: the quiz stage's result (raft.course.quiz.ask_quiz) when a quiz people wrote was asked: its
        paired difference of the product's choice (tuned - base) then decides instead of the held-out split.
    """
    if quiz is not None:
        delta = quiz["delta"]
        low, high = delta["ci"] or (None, None)
        said = (f"tuned - base on the quiz ({quiz['n']} items, the product's choice) {delta['mean_delta']:+.3f}, "
                f"95% interval [{low:+.3f}, {high:+.3f}]" if low is not None else "no interval on the quiz")
    else:
        primary = brief["primary"]
        cell = brief["settings"][primary]
        low, high = cell["delta_ci"] or (None, None)
        said = (f"tuned - base F1 on {primary} {cell['delta']:+.3f}, 95% interval "
                f"[{low:+.3f}, {high:+.3f}]" if low is not None else f"no interval on {primary}")
    if policy == "never":
        return False, f"not installed (--install never); {said}"
    if policy == "always":
        return True, f"installed (--install always); {said}"
    worse = [s for s, c in brief["settings"].items() if c["delta_ci"] and c["delta_ci"][1] < 0]
    if low is None or low <= 0:
        return False, (f"not installed: the tuned model does not beat the base beyond its interval ({said}); "
                       "rerun with --install always to install it anyway")
    if worse:
        return False, (f"not installed: the tuned model is worse beyond its interval on {', '.join(worse)} "
                       f"({said}); rerun with --install always to install it anyway")
    return True, f"installed: the tuned model beats the base ({said})"


__all__ = ["evaluation_brief", "decide"]
