"""A course of slides, a handout, a notebook and PDFs through `rag index`, `rag search` and `rag ask`: every
file made in the test by the library that writes it, the scanned PDF skipped with its reason, and every
passage carrying its slide, page or cell in `--json` and in its label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import cli
from rag.ingest.ocr import tesseract_path
from tests.formatgen import make_docx, make_ipynb, make_pptx, make_scanned_pdf, make_text_pdf

SLIDE3 = "Prompting changes only the input text, while fine-tuning updates the weights of the model itself."
PAGE2 = "Beam search keeps the four most probable partial sentences at every decoding step."


def write_course(root: Path) -> Path:
    root.mkdir()
    (root / "slides.pptx").write_bytes(make_pptx([
        {"title": "Welcome", "body": ["Two days on generative AI with large language models."]},
        {"title": "Attention", "body": ["Each token attends to every other token through queries and keys."]},
        {"title": "Fine-tuning vs prompting", "body": [SLIDE3], "notes": "Ask who has fine-tuned a model."},
        {"title": "Wrap-up", "body": ["Bring questions about retrieval augmented generation tomorrow."]},
    ]))
    (root / "handout.docx").write_bytes(make_docx([
        ("title", "Course handout"), ("heading1", "Grading"),
        ("para", "The project counts for sixty percent of the grade and the exam for forty."),
        ("table", [["Part", "Weight"], ["Project", "60%"], ["Exam", "40%"]]),
    ]))
    (root / "lab.ipynb").write_bytes(make_ipynb([
        ("markdown", "# Lab: tokenizers\n\nCount how many word pieces a tokenizer makes of a sentence."),
        ("code", "from transformers import AutoTokenizer\ntok = AutoTokenizer.from_pretrained('gpt2')"),
    ], output="Downloading vocabulary files"))
    (root / "two-pages.pdf").write_bytes(make_text_pdf([
        "Greedy decoding picks the single most probable token at every step.", PAGE2]))
    (root / "scanned.pdf").write_bytes(make_scanned_pdf(["A scanned page of handwritten notes."]))
    return root


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("formats")
    corpus = write_course(base / "course")
    idx = base / "idx"
    r = CliRunner().invoke(cli, ["index", str(corpus), "--index-dir", str(idx)])
    return corpus, idx, r.output


def test_the_folder_indexes_with_the_scanned_pdf_skipped_with_its_reason(course):
    _, _, output = course
    assert "4 added" in output and "1 skipped" in output, output
    assert ("skipped scanned.pdf: scanned or image-only PDF (its page is an image with no text layer); run OCR "
            "on it first (for example `ocrmypdf in.pdf out.pdf`), turn on the setting ocr (`rag index --ocr`), "
            "or export its text") in output


def test_search_finds_the_slide_3_sentence_with_its_slide_number(course):
    _, idx, _ = course
    r = CliRunner().invoke(cli, ["search", "Does prompting change the weights of the model?", "-k", "3", "--json",
                                 "--index-dir", str(idx)])
    assert r.exit_code == 0, r.output
    top = json.loads(r.output)[0]
    assert top["source"] == "slides.pptx" and SLIDE3 in top["text"]
    assert top["slide"] == 3 and "page" not in top and "cell" not in top
    assert top["label"] == "slides.pptx · slide 3 · Fine-tuning vs prompting"
    r = CliRunner().invoke(cli, ["search", "Does prompting change the weights of the model?", "-k", "1",
                                 "--index-dir", str(idx)])
    assert "slides.pptx · slide 3 · Fine-tuning vs prompting" in r.output.splitlines()[0]


def test_pages_and_cells_reach_the_json_too(course):
    _, idx, _ = course
    r = CliRunner().invoke(cli, ["search", "How many partial sentences does beam search keep?", "-k", "5",
                                 "--json", "--index-dir", str(idx)])
    pdf = next(h for h in json.loads(r.output) if h["source"] == "two-pages.pdf")
    assert PAGE2 in pdf["text"] and pdf.get("page_end", pdf["page"]) == 2
    r = CliRunner().invoke(cli, ["search", "count the word pieces of a tokenizer", "-k", "5", "--json",
                                 "--index-dir", str(idx)])
    lab = next(h for h in json.loads(r.output) if h["source"] == "lab.ipynb")
    assert lab["cell"] == 1 and lab["label"].startswith("lab.ipynb · cell") and "Downloading" not in lab["text"]
    r = CliRunner().invoke(cli, ["search", "How much does the exam count?", "-k", "5", "--json",
                                 "--index-dir", str(idx)])
    doc = next(h for h in json.loads(r.output) if h["source"] == "handout.docx")
    assert "Exam | 40%" in doc["text"] and doc["label"].startswith("handout.docx · Course handout")


@pytest.mark.llm  # `rag ask` runs the bundled model (8 new tokens)
def test_ask_json_sources_carry_the_slide_and_the_label(course, monkeypatch):
    _, idx, _ = course
    monkeypatch.setenv("RAG_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("RAG_TOP_K", "2")
    r = CliRunner().invoke(cli, ["ask", "--json", "--model", "bundled", "--index-dir", str(idx),
                                 "Does prompting change the weights of the model?"])
    assert r.exit_code == 0, r.output
    answer = json.loads(r.output[r.output.index("{"):])
    slide = next(s for s in answer["sources"] if s["source"] == "slides.pptx")
    assert slide["slide"] == 3 and slide["label"] == "slides.pptx · slide 3 · Fine-tuning vs prompting"
    r = CliRunner().invoke(cli, ["ask", "--model", "bundled", "--index-dir", str(idx),
                                 "Does prompting change the weights of the model?"])
    assert "slides.pptx · slide 3 · Fine-tuning vs prompting  (score" in r.output


@pytest.mark.skipif(tesseract_path() is None, reason="Debian's tesseract-ocr is not installed "
                    "(scripts/test.sh installs it when run as root)")
def test_index_with_ocr_reads_the_scanned_pdf_and_finds_its_page(course, tmp_path):
    corpus, _, _ = course
    idx = str(tmp_path / "idx-ocr")
    r = CliRunner().invoke(cli, ["index", str(corpus), "--ocr", "--index-dir", idx])
    assert r.exit_code == 0 and "5 added" in r.output and "0 skipped" in r.output, r.output
    assert "note scanned.pdf: page 1 was read by OCR (tesseract): its words may hold recognition errors" in r.output
    r = CliRunner().invoke(cli, ["search", "handwritten notes", "-k", "5", "--json", "--index-dir", idx])
    scan = next(h for h in json.loads(r.output) if h["source"] == "scanned.pdf")
    assert "handwritten notes" in scan["text"] and scan["page"] == 1 and scan["label"] == "scanned.pdf · page 1"
