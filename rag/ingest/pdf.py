"""PDF files (pypdf): one part per page, so every passage knows its page; scanned pages said, not skipped in silence.

A page with no text layer but images on it is a scan (or slides exported as pictures): its words cannot
be read without OCR. Without OCR (the default; rag.ingest.ocr) a PDF made only of such pages is skipped
with that reason, and a PDF with some of them is indexed with a note naming those pages. With OCR on,
those pages are read by Tesseract and named in a note.
"""

from __future__ import annotations

import io

from rag.errors import UnreadableFile
from rag.ingest.ocr import INSTALL_HINT, ocr_page, tesseract_path
from rag.ingest.reader import FileText, numbered, one_line

# pypdf's text extraction is quadratic in a page's drawing commands (4x the commands, ~14x the time), so a 10 KB
# file inflating to 70 MiB on one page, under pypdf's own limits, would hold `rag index` for hours.
MAX_PDF_PAGE_CONTENT = 4 * 1024 * 1024
OCR_HINT = ("run OCR on it first (for example `ocrmypdf in.pdf out.pdf`), turn on the setting ocr "
            "(`rag index --ocr`), or export its text")


def read_pdf(data: bytes, ocr: bool = False) -> FileText:
    """The text of each page of a PDF.

    :param data: the file's bytes.
    :param ocr: read pages that hold only images with Tesseract (rag.ingest.ocr).
    :returns: one part per page (kind "page"), a note naming the pages that are images only (or were read
        by OCR).
    :raises UnreadableFile: broken or encrypted PDF, a page too costly to read, only image pages (scanned)
        without OCR or without the tesseract program, or an OCR failure.
    """
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    program = tesseract_path() if ocr else None
    read_by_ocr = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            open_pdf(reader)
        pages, image_only = [], []
        for number, page in enumerate(reader.pages, start=1):
            contents = page.get_contents()
            size = len(contents.get_data()) if contents is not None else 0
            if size > MAX_PDF_PAGE_CONTENT:
                raise UnreadableFile(
                    f"PDF page {number} holds {size / 1_048_576:.0f} MiB of drawing commands (over "
                    f"{MAX_PDF_PAGE_CONTENT // 1_048_576} MiB): too costly to read, a decompression bomb or an "
                    "oversized page; save a smaller, ordinary PDF")
            text = (page.extract_text() or "").strip()
            if not text and len(page.images) > 0:
                text = ocr_page(page, program) if program else ""
                (read_by_ocr if text else image_only).append(number)
            pages.append(text)
    except UnreadableFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnreadableFile(f"broken PDF ({type(exc).__name__}: {one_line(str(exc))[:80]})") from None
    if image_only and not any(pages):
        missing = f"; the setting ocr is on but the tesseract program is not installed: {INSTALL_HINT}"
        raise UnreadableFile(scanned_reason(len(pages), len(image_only)) + (missing if ocr and not program else ""))
    notes = []
    if read_by_ocr:
        which, its = ("page {} was", "its") if len(read_by_ocr) == 1 else ("pages {} were", "their")
        notes.append(f"{which.format(numbered(read_by_ocr))} read by OCR (tesseract): {its} words may hold "
                     "recognition errors")
    if image_only:
        which = "page {} holds" if len(image_only) == 1 else "pages {} hold"
        notes.append(f"{which.format(numbered(image_only))} only images (scanned?), no text read; {OCR_HINT}")
    return FileText(pages, "page", list(range(1, len(pages) + 1)), notes=notes)


def scanned_reason(n_pages: int, n_image_pages: int) -> str:
    """The skip reason of a PDF whose `n_pages` have no text layer, `n_image_pages` of them holding images."""
    pages = "its page is an image" if n_pages == 1 else (
        f"its {n_pages} pages are images" if n_image_pages == n_pages
        else f"{n_image_pages} of its {n_pages} pages are images, the others blank")
    return f"scanned or image-only PDF ({pages} with no text layer); {OCR_HINT}"


def open_pdf(reader) -> None:
    """Open an encrypted PDF the way a viewer does: with the empty user password, else say why not.

    Many course PDFs carry only an owner password (printing or copying restricted): every viewer opens them
    without asking, so their text is read too; "encrypted PDF" used to skip them.

    :param reader: a pypdf PdfReader whose `is_encrypted` is true.
    :raises UnreadableFile: the PDF needs a password, or its cipher needs a package that is not installed.
    """
    try:
        opened = reader.decrypt("")
    except Exception as exc:  # pypdf's DependencyError: AES needs the cryptography package
        raise UnreadableFile(f"encrypted PDF that cannot be opened here ({one_line(str(exc))[:80]}); "
                             "save an unencrypted copy") from None
    if not opened:
        raise UnreadableFile("encrypted PDF (it needs a password); save an unencrypted copy")
