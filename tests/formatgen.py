"""Real course files made by the libraries that write them: a slide deck (python-pptx), a handout
(python-docx), a notebook (nbformat), a text PDF (fpdf2) and a scanned PDF (a Pillow image in an fpdf2 PDF,
no text layer), for the loader, index and CLI tests."""

from __future__ import annotations

import io

FONT = "Helvetica"


def make_pptx(slides: list[dict], hidden: tuple[int, ...] = ()) -> bytes:
    """A .pptx deck, one slide per dict: "title", "body" (lines; a tuple (text, level) indents), "notes",
    "table" (rows of cells); slides numbered from 1 in `hidden` are hidden in the deck."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for number, spec in enumerate(slides, start=1):
        slide = deck.slides.add_slide(deck.slide_layouts[1 if spec.get("title") else 6])
        if spec.get("title"):
            slide.shapes.title.text = spec["title"]
        body = spec.get("body") or []
        if body:
            frame = (slide.placeholders[1].text_frame if spec.get("title")
                     else slide.shapes.add_textbox(Inches(1), Inches(1), Inches(8), Inches(4)).text_frame)
            for i, line in enumerate(body):
                text, level = line if isinstance(line, tuple) else (line, 0)
                para = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
                para.text, para.level = text, level
        if spec.get("table"):
            rows = spec["table"]
            table = slide.shapes.add_table(len(rows), len(rows[0]), Inches(1), Inches(5), Inches(8), Inches(1)).table
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
        if spec.get("notes"):
            slide.notes_slide.notes_text_frame.text = spec["notes"]
        if number in hidden:
            slide.element.set("show", "0")
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def make_docx(blocks: list[tuple[str, object]]) -> bytes:
    """A .docx handout from ("title" | "heading1".."heading3" | "para" | "bullet", text) and ("table", rows)."""
    import docx

    document = docx.Document()
    for kind, value in blocks:
        if kind == "title":
            document.add_heading(value, 0)
        elif kind.startswith("heading"):
            document.add_heading(value, int(kind[-1]))
        elif kind == "bullet":
            document.add_paragraph(value, style="List Bullet")
        elif kind == "table":
            rows = value
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
        else:
            document.add_paragraph(value)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_ipynb(cells: list[tuple[str, str]], output: str = "") -> bytes:
    """A notebook of ("markdown" | "code" | "raw", source) cells; every code cell gets `output` as its printed
    stream output when given (outputs are not indexed)."""
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
                                   "language_info": {"name": "python"}})
    for kind, source in cells:
        if kind == "code":
            outputs = [v4.new_output("stream", name="stdout", text=output)] if output else []
            nb.cells.append(v4.new_code_cell(source, outputs=outputs, execution_count=1))
        elif kind == "raw":
            nb.cells.append(v4.new_raw_cell(source))
        else:
            nb.cells.append(v4.new_markdown_cell(source))
    nbformat.validate(nb)
    return nbformat.writes(nb).encode("utf-8")


def make_text_pdf(pages: list[str]) -> bytes:
    """A PDF with a text layer, one page per string (lines split on newlines), written by fpdf2."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font(FONT, size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_scanned_pdf(pages: list[str]) -> bytes:
    """A PDF of page pictures with no text layer, as a scanner writes it: each page's text drawn into a
    Pillow image, the image placed on an fpdf2 page."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw, ImageFont

    pdf = FPDF()
    for text in pages:
        image = Image.new("L", (1240, 1754), 255)  # A4 at 150 dpi
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=36)
        draw.multiline_text((100, 120), text, fill=0, font=font, spacing=18)
        pdf.add_page()
        pdf.image(image, x=0, y=0, w=pdf.w, h=pdf.h)
    return bytes(pdf.output())
