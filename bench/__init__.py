"""Benchmarks of course-rag: each module measures one thing and writes its result to bench/results/<name>.json
and .md. Run from the repository root as `python -m bench.<name>` (e.g. `python -m bench.search_latency
--quick`); bench/benchutil.py holds the helpers they share (timing, load accounting, tables, JSON results)."""
