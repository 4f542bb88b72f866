"""The mode stage of answering: each mode is a generator that yields the answer's text pieces and returns its
`ModeResult` (rag.answering.modes.result); `run_mode` (rag.answering.modes.run) picks the plan's mode and acts
on a mode's hand-over. free: the model writes the answer; grounded: a quote chosen among the passages' sentences,
then a short answer; choice: an option of a pasted quiz item, then the quote that supports it."""
