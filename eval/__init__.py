"""Evaluations of course-rag: each module runs one benchmark and writes its result to eval/results/. Run from
the repository root as `python -m eval.<name>` (e.g. `python -m eval.courses_benchmark`); the courses they read
are in ../shared/eval-courses (never copied here), the shipped course's question sets beside this file."""
