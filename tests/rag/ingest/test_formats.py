"""Slide decks, Word handouts, notebooks and PDFs, each made in the test by the library that writes them
(tests/formatgen.py), read and chunked with their page, slide or cell kept; scanned and damaged files
skipped with their reason."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from rag.errors import UnreadableFile
from rag.ingest.chunking import Chunker
from rag.ingest.loaders import load_documents, read_file
from rag.ingest.locations import SHARED_LABEL, passage_label
from rag.ingest.ocr import tesseract_path
from tests.formatgen import make_docx, make_ipynb, make_pptx, make_scanned_pdf, make_text_pdf
from tests.pdfgen import make_pdf

LORA = "LoRA trains two small low-rank matrices while the base weights stay frozen."
DECK = [
    {"title": "Welcome", "body": ["Generative AI with large language models, a two-day workshop."]},
    {"title": "Attention", "body": ["Queries are matched against keys.", ("softmax turns scores into weights", 1)],
     "notes": "Draw the attention matrix on the board."},
    {"title": "Fine-tuning vs prompting", "body": [LORA],
     "table": [["Method", "Trained parameters"], ["LoRA", "0.1 percent"]]},
    {"body": ["A slide without a title: questions from the audience."]},
]


@pytest.fixture(scope="module")
def chunker(embedder):
    return Chunker(embedder.tokenizer, embedder.max_tokens, chunk_tokens=200, overlap=32)


def test_a_deck_is_one_part_per_slide_with_title_body_table_and_notes(chunker):
    doc = read_file(Path("slides.pptx"), "week1/slides.pptx", make_pptx(DECK))
    assert doc.metadata["kind"] == "pptx" and doc.metadata["parts"]["numbers"] == [1, 2, 3, 4]
    assert "# Attention\n\nQueries are matched against keys.\n  softmax turns scores into weights" in doc.text
    assert "Notes: Draw the attention matrix on the board." in doc.text
    assert "Method | Trained parameters\nLoRA | 0.1 percent" in doc.text
    chunks = chunker.split(doc)
    # Small slides are never packed together: each passage is one slide, and knows which.
    assert [(c.metadata["slide"], c.section) for c in chunks] == [
        (1, "Welcome"), (2, "Attention"), (3, "Fine-tuning vs prompting"), (4, "")]
    assert all("slide_end" not in c.metadata for c in chunks)
    third = chunks[2]
    assert LORA in third.text and "Queries" not in third.text and doc.text[third.span[0]:third.span[1]] == third.text
    assert passage_label(third.source, third.section, third.metadata, third.text) == \
        "week1/slides.pptx · slide 3 · Fine-tuning vs prompting"
    assert passage_label(chunks[3].source, chunks[3].section, chunks[3].metadata) == "week1/slides.pptx · slide 4"


def test_a_hidden_slide_is_left_out_and_named_and_the_others_keep_their_numbers(chunker):
    doc = read_file(Path("d.pptx"), "d.pptx", make_pptx(DECK, hidden=(2,)))
    assert "Queries are matched" not in doc.text and "Draw the attention" not in doc.text
    assert doc.metadata["notes"] == ["slide 2 hidden in the deck, not indexed (unhide it to index it)"]
    assert [c.metadata["slide"] for c in chunker.split(doc)] == [1, 3, 4]


def test_a_long_slide_is_split_and_its_passages_told_apart_by_their_opening_words(chunker):
    long_body = [f"Point {i}: the decoder predicts token {i} from the tokens before it, one at a time."
                 for i in range(40)]
    doc = read_file(Path("d.pptx"), "d.pptx", make_pptx([{"title": "Decoding", "body": long_body}]))
    chunks = chunker.split(doc)
    assert len(chunks) >= 2 and all(c.metadata["slide"] == 1 and c.section == "Decoding" for c in chunks)
    labels = [passage_label(c.source, c.section, c.metadata, c.text) for c in chunks]
    assert all(c.metadata.get(SHARED_LABEL) for c in chunks)
    assert len(set(labels)) == len(labels)
    assert any(label.startswith("d.pptx · slide 1 · Decoding · “Point 0: the decoder") for label in labels)


def test_a_word_handout_gives_heading_paths_and_keeps_its_tables(chunker):
    data = make_docx([
        ("title", "Syllabus"), ("heading1", "Week 1"), ("para", "We read the attention paper together."),
        ("bullet", "Bring a laptop with Python installed."),
        ("table", [["Week", "Topic", "Reading"], ["1", "Attention", "Vaswani et al."]]),
        ("heading1", "Week 2"), ("heading2", "Fine-tuning"), ("para", LORA),
        ("para", "# of students per lab: 30."),
    ])
    doc = read_file(Path("syllabus.docx"), "syllabus.docx", data)
    assert doc.metadata["kind"] == "docx" and "parts" not in doc.metadata
    assert "# Syllabus\n\n## Week 1\n\nWe read the attention paper together." in doc.text
    assert "- Bring a laptop with Python installed." in doc.text
    assert "Week | Topic | Reading\n1 | Attention | Vaswani et al." in doc.text
    assert "\\# of students per lab: 30." in doc.text  # a sentence, not a heading
    cutting = Chunker(chunker.tokenizer, 256, chunk_tokens=200, overlap=32, merge_sections=False)
    sections = {c.section: c.text for c in cutting.split(doc)}
    assert LORA in sections["Syllabus > Week 2 > Fine-tuning"]
    assert "Vaswani et al." in sections["Syllabus > Week 1"]


def test_a_merged_table_cell_is_read_once(tmp_path):
    import docx

    document = docx.Document()
    table = document.add_table(rows=2, cols=3)
    table.cell(0, 0).merge(table.cell(0, 1)).text = "Spans two columns"
    table.cell(0, 2).text = "Third"
    table.cell(1, 0).text = "a"
    out = BytesIO()
    document.save(out)
    doc = read_file(Path("t.docx"), "t.docx", out.getvalue())
    assert doc.text.splitlines()[0] == "Spans two columns | Third"


def test_a_notebook_is_one_part_per_cell_outputs_left_out(chunker):
    data = make_ipynb([
        ("markdown", "# Lab 1: embeddings\n\nWe embed sentences and compare them by cosine similarity."),
        ("code", "import numpy as np\n# normalise the vectors\nv = v / np.linalg.norm(v)"),
        ("code", ""),
        ("markdown", "## Results\n\nSimilar sentences get a cosine close to one.<!-- grade: B -->"),
        ("raw", "Raw cell text for the exporter."),
    ], output="SECRET PRINTED OUTPUT")
    doc = read_file(Path("lab.ipynb"), "lab.ipynb", data)
    assert doc.metadata["parts"] == {"kind": "cell", "starts": doc.metadata["parts"]["starts"], "numbers": [1, 2, 4, 5]}
    assert "SECRET PRINTED OUTPUT" not in doc.text and "grade: B" not in doc.text
    assert doc.metadata["dropped"] == {"comments": len("<!-- grade: B -->")}
    assert "```python\nimport numpy as np\n# normalise the vectors\n" in doc.text
    cutting = Chunker(chunker.tokenizer, 256, chunk_tokens=200, overlap=32, merge_sections=False)
    by_section = {c.section: c for c in cutting.split(doc)}
    assert set(by_section) == {"Lab 1: embeddings", "Lab 1: embeddings > Results"}  # the code comment is no heading
    assert by_section["Lab 1: embeddings"].metadata == {"embed_context": "", "cell": 1, "cell_end": 2}
    assert by_section["Lab 1: embeddings > Results"].metadata == {"embed_context": "", "cell": 4, "cell_end": 5}
    packed = chunker.split(doc)  # small cells are packed into one passage, which says so
    assert len(packed) == 1 and passage_label("lab.ipynb", packed[0].section, packed[0].metadata) == \
        "lab.ipynb · cells 1–5 · Lab 1: embeddings"


def test_pdf_pages_are_kept_through_chunking(chunker):
    pages = [" ".join(f"Page one sentence {i} about attention heads and their weights." for i in range(40)),
             "Page two explains the decoder only architecture."]
    doc = read_file(Path("n.pdf"), "n.pdf", make_text_pdf(pages))
    chunks = chunker.split(doc)
    last = chunks[-1]
    assert "decoder only architecture" in last.text
    assert last.metadata["page"] in (1, 2) and last.metadata.get("page_end", last.metadata["page"]) == 2
    assert len(chunks) >= 3 and chunks[0].metadata == {"embed_context": "", "page": 1, SHARED_LABEL: True}
    labels = [passage_label(c.source, c.section, c.metadata, c.text) for c in chunks]
    assert labels[0].startswith("n.pdf · page 1 · “Page one sentence 0 about") and len(set(labels)) == len(labels)


def test_a_scanned_pdf_is_skipped_with_its_reason_and_scanned_pages_are_named(tmp_path):
    with pytest.raises(UnreadableFile, match=r"^scanned or image-only PDF \(its 2 pages are images with no "
                                              r"text layer\); run OCR on it first"):
        read_file(Path("scan.pdf"), "scan.pdf", make_scanned_pdf(["Scanned page one", "Scanned page two"]))
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "A typed first page.")
    pdf.add_page()
    pdf.image(Image.new("L", (200, 200), 128), x=10, y=10, w=50)
    doc = read_file(Path("mixed.pdf"), "mixed.pdf", bytes(pdf.output()))
    assert "A typed first page." in doc.text
    assert doc.metadata["notes"] == ["page 2 holds only images (scanned?), no text read; run OCR on it first "
                                     "(for example `ocrmypdf in.pdf out.pdf`), turn on the setting ocr "
                                     "(`rag index --ocr`), or export its text"]
    blank = make_pdf([""])
    with pytest.raises(UnreadableFile, match="no text layer on any page"):
        read_file(Path("blank.pdf"), "blank.pdf", blank)


@pytest.mark.parametrize("name,data,needle", [
    ("old.pptx", b"\xd0\xcf\x11\xe0 an old binary .ppt renamed", "not a PowerPoint .pptx file (not a zip archive"),
    ("old.docx", b"\xd0\xcf\x11\xe0 an old binary .doc renamed", "not a Word .docx file (not a zip archive"),
    ("x.ipynb", b"{not json", "not a Jupyter notebook (not valid JSON)"),
    ("y.ipynb", b'{"cells": [{"cell_type": "markdown"}], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}',
     "not a valid Jupyter notebook (ValidationError"),
])
def test_damaged_files_are_skipped_with_a_reason(name, data, needle):
    with pytest.raises(UnreadableFile, match=None) as exc:
        read_file(Path(name), name, data)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_a_docx_of_another_kind_and_a_zip_bomb_are_skipped():
    pptx_as_docx = make_pptx(DECK)
    with pytest.raises(UnreadableFile, match=r"not a Word \.docx file \(\w+"):
        read_file(Path("wrong.docx"), "wrong.docx", pptx_as_docx)
    bomb = BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("ppt/slides/slide1.xml", "w", force_zip64=True) as f:
            for _ in range(600):
                f.write(bytes(1 << 20))
    assert len(bomb.getvalue()) < 1 << 20
    with pytest.raises(UnreadableFile, match=r"unpacks to 600 MiB \(over 512 MiB\): a zip bomb"):
        read_file(Path("bomb.pptx"), "bomb.pptx", bomb.getvalue())


def test_a_folder_of_every_format_loads_and_says_what_it_skipped(tmp_path):
    root = tmp_path / "course"
    root.mkdir()
    (root / "slides.pptx").write_bytes(make_pptx(DECK))
    (root / "handout.docx").write_bytes(make_docx([("heading1", "Rules"), ("para", "Submit on time.")]))
    (root / "lab.ipynb").write_bytes(make_ipynb([("markdown", "# Lab\n\nRun every cell.")]))
    (root / "two.pdf").write_bytes(make_text_pdf(["First page.", "Second page."]))
    (root / "scan.pdf").write_bytes(make_scanned_pdf(["Scanned text"]))
    (root / "grades.xlsx").write_bytes(b"PK\x03\x04 a spreadsheet")
    docs, skipped = load_documents(root)
    assert sorted(d.source for d in docs) == ["handout.docx", "lab.ipynb", "slides.pptx", "two.pdf"]
    reasons = {s.source: s.reason for s in skipped}
    assert set(reasons) == {"scan.pdf", "grades.xlsx"}
    assert reasons["scan.pdf"].startswith("scanned or image-only PDF (its page is an image with no text layer)")
    assert reasons["grades.xlsx"].startswith("unsupported file type .xlsx; indexed types are .docx, .htm, .html, "
                                             ".ipynb, .markdown, .md, .pdf, .pptx, .txt")


def test_the_app_accepts_the_types_the_indexer_reads(tmp_path):
    from rag.errors import RagError
    from rag.ingest.paths import SUPPORTED
    from ui.files import ALLOWED_EXTENSIONS, save_upload

    assert set(ALLOWED_EXTENSIONS) == set(SUPPORTED)
    corpus = tmp_path / "corpus"
    assert save_upload(corpus, "slides.pptx", make_pptx(DECK)).status == "added"
    assert save_upload(corpus, "lab.ipynb", make_ipynb([("markdown", "# Lab\n\ntext")])).status == "added"
    with pytest.raises(RagError, match="scanned or image-only PDF"):
        save_upload(corpus, "scan.pdf", make_scanned_pdf(["Scanned text"]))
    with pytest.raises(RagError, match="only .docx, .htm"):
        save_upload(corpus, "grades.xlsx", b"PK\x03\x04")


needs_tesseract = pytest.mark.skipif(tesseract_path() is None, reason="Debian's tesseract-ocr is not installed "
                                     "(scripts/test.sh installs it when run as root)")


@needs_tesseract
def test_with_ocr_on_a_scanned_pdf_is_read_page_by_page_and_said_so(chunker):
    data = make_scanned_pdf(["Backpropagation computes the gradient\nof the loss for every weight.",
                             "Dropout switches off random neurons\nduring training."])
    doc = read_file(Path("scan.pdf"), "scan.pdf", data, ocr=True)
    words = " ".join(doc.text.split())
    assert "Backpropagation computes the gradient of the loss for every weight." in words
    assert "Dropout switches off random neurons during training." in words
    assert doc.metadata["notes"] == ["pages 1 and 2 were read by OCR (tesseract): their words may hold "
                                     "recognition errors"]
    cutting = Chunker(chunker.tokenizer, 256, chunk_tokens=8, overlap=0)
    pages = {c.metadata["page"] for c in cutting.split(doc) if "Dropout" in c.text}
    assert pages == {2}


def test_with_ocr_on_but_no_tesseract_the_reason_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without the tesseract program
    with pytest.raises(UnreadableFile, match=r"the setting ocr is on but the tesseract program is not installed: "
                                              r"install it with `apt-get install tesseract-ocr`$"):
        read_file(Path("scan.pdf"), "scan.pdf", make_scanned_pdf(["Scanned text"]), ocr=True)
