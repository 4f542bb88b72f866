"""The human summary of a finished `raft train` run."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """A few human lines about a finished run."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [
        ("already trained (same arguments): " if report.get("already_trained") else "")
        + f"{report.get('method', 'raft').upper()}: {report['samples']} samples x {report['epochs']:g} epochs = "
        f"{report['steps']} steps in "
        f"{report['seconds']:.0f} s ({report['seconds_per_sample']:.2f} s/sample, peak RSS "
        f"{report['peak_rss_mb']:.0f} MB, {report['threads']} threads"
        + (f", resumed from step {report['resumed_from_step']})" if report.get("resumed_from_step") else ")"),
        f"train loss {num(report['initial_loss'])} -> {num(report['final_loss'])} (first -> last step); "
        + (f"validation loss {num(report['val_loss_before'])} -> {num(report['val_loss_after'])} "
           f"({report['validation_samples']} samples)" if report["validation_samples"] else "no validation split"),
        f"truncated to --max-length {report['args']['max_length']}: {report['truncated']} samples "
        f"({report['docs_dropped']} distractors dropped, {report['docs_cut']} with cut documents), "
        f"{report['skipped_too_long']} skipped (answer too long)",
        f"-> {report['files']['merged']} (use: rag ask --model {report['files']['merged']} \"...\"), adapter in "
        f"{report['files']['adapter']}, {report['files']['loss_plot']}",
    ]
    return "\n".join(lines)
