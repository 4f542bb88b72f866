"""The answer's tokens against the request's max_tokens, as the OpenAI reference reports them.

The reference: `max_tokens` bounds the tokens the model writes, `finish_reason` is "length" when that limit
cut the answer, `usage.completion_tokens` counts the tokens of the completion. Here the model writes a free
answer, or in grounded mode the short answer after a quote it chose (copied from the course, not written).
The budget is spent on the text the model writes, as it is shown: a piece that would overflow it is cut to
its longest prefix that fits, and the answer ends there with "length". The model is asked for one token
more than the budget, so a model that would have gone on is seen to be cut, even when the text shown
(markers removed) is shorter than its tokens. `completion_tokens` counts the whole answer returned, a
grounded quote included (rag.answering.stream.AnswerStream.completion_tokens): the true count of what came
back, which the quote can make larger than max_tokens. Tokens are the generator's `count_tokens`: exact
for in-process models, an estimate for HTTP ones.
"""

from __future__ import annotations

from collections.abc import Callable


SEAM = 4  # tokens a join of two texts may add over the sum of their counts, with room to spare


class TokenBudget:
    """What may still be shown of an answer under `limit` tokens, and whether the limit cut it.

    :param count: tokens of a text (the generator's `count_tokens`).
    :param limit: the most tokens the answer may hold (the request's max_tokens).
    """

    def __init__(self, count: Callable[[str], int], limit: int) -> None:
        self.count = count
        self.limit = limit
        self.text = ""
        self.used = 0
        self.cut = False

    @property
    def left(self) -> int:
        """Tokens still free (at least; `used` is an upper bound until the text nears the limit)."""
        return max(0, self.limit - self.used)

    def take(self, piece: str) -> str:
        """The part of `piece` that fits after the text taken so far (all of it, or its longest prefix that
        fits, which sets `cut`); "" once cut.

        :param piece: the next text of the answer.
        :returns: the text to show.
        """
        if self.cut or not piece:
            return ""
        # Far from the limit, the piece's own count bounds what it adds (SEAM tokens of slack for where it
        # joins the text): counting only the piece keeps a long answer linear. Near the limit, count exactly.
        bound = self.used + self.count(piece) + SEAM
        if bound <= self.limit - SEAM:
            self.text, self.used = self.text + piece, bound
            return piece
        n = self.count(self.text + piece)
        if n <= self.limit:
            self.text, self.used = self.text + piece, n
            return piece
        lo, hi = 0, len(piece)  # the prefix of length lo fits, that of length hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.count(self.text + piece[:mid]) <= self.limit:
                lo = mid
            else:
                hi = mid
        fit = piece[:lo]
        self.text += fit
        self.used = self.count(self.text)
        self.cut = True
        return fit

    def over(self, text: str) -> bool:
        """Whether `text` (e.g. the model's raw output, markers included) holds more tokens than the limit."""
        return self.count(text) > self.limit
