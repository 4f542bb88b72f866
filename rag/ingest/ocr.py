"""OCR of scanned PDF pages with Tesseract (Debian's `tesseract-ocr`), only when the user turns it on.

Off by default: the setting `ocr` (`rag index --ocr`, `RAG_OCR=true`, `rag.toml`) turns it on, and a
scanned page is then read from its pictures; every page read this way is named in a note, since OCR text
can hold recognition errors. With the setting off, or on without the `tesseract` program, a scanned PDF
is skipped with a reason saying so: the product never depends on a program it was not asked to use.

Why a subprocess: Tesseract is a C++ program that Debian packages with its language data; the Python
wrappers on PyPI (pytesseract) only run that same program. pypdf hands out each page's embedded images
(`page.images`, decoded by Pillow); each is sent to `tesseract stdin stdout` as PNG, one thread
(OMP_THREAD_LIMIT=1: the machine's cores are shared with the embedder), with a time limit.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from typing import Any

from rag.errors import UnreadableFile

TESSERACT = "tesseract"
OCR_LANGUAGE = "eng"  # tesseract-ocr-eng, installed with tesseract-ocr
OCR_PAGE_SECONDS = 120  # one image past this is given up (a normal page takes seconds)
INSTALL_HINT = "install it with `apt-get install tesseract-ocr`"


def tesseract_path() -> str | None:
    """The `tesseract` program on PATH, or None when it is not installed."""
    return shutil.which(TESSERACT)


def ocr_page(page: Any, program: str) -> str:
    """The text Tesseract reads in the images of one PDF page, in their order on the page.

    :param page: a pypdf PageObject (its `images` are decoded with Pillow).
    :param program: the tesseract executable (`tesseract_path()`).
    :returns: the recognised text, whitespace-trimmed ("" when no image holds words).
    :raises UnreadableFile: Tesseract failed or ran past OCR_PAGE_SECONDS on an image.
    """
    texts = []
    for image in page.images:
        png = io.BytesIO()
        image.image.save(png, format="PNG")
        try:
            done = subprocess.run([program, "stdin", "stdout", "-l", OCR_LANGUAGE], input=png.getvalue(),
                                  capture_output=True, timeout=OCR_PAGE_SECONDS,
                                  env={**os.environ, "OMP_THREAD_LIMIT": "1"}, check=False)
        except subprocess.TimeoutExpired:
            raise UnreadableFile(f"OCR of a page image took over {OCR_PAGE_SECONDS} s; export the text instead") from None
        if done.returncode != 0:
            detail = " ".join(done.stderr.decode("utf-8", "replace").split())[:120]
            raise UnreadableFile(f"OCR failed (tesseract exit {done.returncode}: {detail})")
        texts.append(done.stdout.decode("utf-8", "replace").strip())
    return "\n\n".join(t for t in texts if t)
