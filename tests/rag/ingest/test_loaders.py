"""Loading: every supported kind reads, every bad kind is skipped with a message naming the problem."""

from __future__ import annotations

from pathlib import Path

from rag.ingest.loaders import load_documents
from tests.pdfgen import make_pdf


def test_loads_md_txt_html_pdf_recursively(tmp_path: Path):
    root = tmp_path / "c"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.md").write_text("# Title\n\nSome text.", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("plain text file", encoding="utf-8")
    (root / "sub" / "deeper" / "c.html").write_text(
        "<html><head><style>x{}</style></head><body><h2>Attention</h2><p>Heads attend.</p>"
        "<ul><li>one</li></ul><script>alert(1)</script></body></html>", encoding="utf-8")
    (root / "d.pdf").write_bytes(make_pdf(["LoRA freezes the base weights.", "Second page here."]))
    (root / "notes.docx").write_bytes(b"PK\x03\x04 not supported, ignored")
    (root / ".hidden.md").write_text("secret", encoding="utf-8")
    docs, skipped = load_documents(root)
    by = {d.source: d for d in docs}
    assert set(by) == {"a.md", "sub/b.txt", "sub/deeper/c.html", "d.pdf"}
    assert skipped == []
    html = by["sub/deeper/c.html"].text
    assert "## Attention" in html and "Heads attend." in html and "- one" in html
    assert "alert" not in html and "x{}" not in html
    pdf = by["d.pdf"]
    assert "LoRA freezes the base weights." in pdf.text and "Second page here." in pdf.text
    assert pdf.metadata["page_starts"][0] == 0 and len(pdf.metadata["page_starts"]) == 2


def test_each_bad_file_kind_is_skipped_with_its_reason(tmp_path: Path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "good.md").write_text("# Fine\n\nreadable", encoding="utf-8")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02\x03ELF\x00\x00" * 50)
    (root / "latin1.md").write_bytes("caf\xe9 na\xefve".encode("latin-1"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage without end")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.md").write_text("   \n\n\t\n", encoding="utf-8")
    docs, skipped = load_documents(root)
    assert [d.source for d in docs] == ["good.md"]
    reasons = {s.source: s.reason for s in skipped}
    assert set(reasons) == {"binary.txt", "latin1.md", "broken.pdf", "empty.txt", "blank.md"}
    assert "binary" in reasons["binary.txt"]
    assert "UTF-8" in reasons["latin1.md"]
    assert "PDF" in reasons["broken.pdf"]
    assert "empty" in reasons["empty.txt"] and "empty" in reasons["blank.md"]


def test_markdown_images_become_their_alt_text(tmp_path: Path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.md").write_text("Before ![Attention diagram](img/Untitled%2052.png) after ![](x.png).", encoding="utf-8")
    docs, _ = load_documents(root)
    assert docs[0].text == "Before Attention diagram after ."
