"""ui.render.safe_markdown (issue 31): every way markdown and raw HTML have to make a browser load a URL is
turned into text or a plain link; fenced code is left as written. (The browser test checks the page.)"""

from __future__ import annotations

import pytest

from ui.render import IMAGE_MARK, safe_markdown


@pytest.mark.parametrize("text", [
    "![x](http://h/p.png?q=1)", "![x](<http://h/p.png>)", "![a][r]\n\n[r]: http://h/r.png", "![a][]\n\n[a]: http://h/a.png",
    "![a]\n\n[a]: http://h/a.png", "![a ![b](http://h/2)](http://h/1)", "![d](data:image/png;base64,AAAA)",
    "`a\n\n![x](http://h/p.png)\n\nb`", "\\`![x](http://h/p.png)`", "<http://a`b> ![x](http://h/p.png) `",
    "``` a`b\n![x](http://h/p.png)\n```",
])
def test_no_image_syntax_survives(text: str) -> None:
    out = safe_markdown(text)
    assert "![" not in out and IMAGE_MARK in out


@pytest.mark.parametrize("tag", ["<img src=x>", "<IFRAME src=x></iframe>", "<video src=x>", "<audio src=x>",
                                 "<source src=x>", "<link rel=stylesheet href=x>", "<object data=x>", "<svg>",
                                 "<!-- x -->", "<img\nsrc=x>"])
def test_raw_html_is_shown_as_text(tag: str) -> None:
    assert "<" not in safe_markdown(f"a {tag} b")  # every "<" escaped: shown, never a tag


def test_fenced_code_links_and_plain_text_are_left_alone() -> None:
    code = "```html\n<img src=x> ![x](u)\n```\n"
    assert safe_markdown(code) == code
    assert safe_markdown("see [the docs](https://example.com) and <https://example.com>, 1 < 2") == \
        "see [the docs](https://example.com) and <https://example.com>, 1 < 2"


@pytest.mark.parametrize("text", [
    "- item\n  ```\n  code\n![img](http://h/x.png)\n  ```\n",
    "1. x\n   ```\n   c\n<img src=http://h/ol>\n   ```\n",
    "- a\n\n   ```\n![i](http://h/li.png)\n   ```\n",
    "> ```\n> code\n![q](http://h/q.png)\n```\n",
])
def test_a_fence_that_ends_with_its_list_or_quote_leaves_no_image_live(text: str) -> None:
    """A fence inside a list item ends with the item: a regex that ran on to the next ``` line left the image
    between them live (markdown-it renders it as <img>)."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render(safe_markdown(text))
    assert "<img" not in html and "http://h" in html


def test_fences_in_lists_and_quotes_stay_as_written() -> None:
    text = "- step\n\n  ```html\n  <img src=x> ![x](u)\n  ```\n\n> ```\n> <video>\n> ```\n"
    assert safe_markdown(text) == text


def test_a_source_is_titled_by_the_label_the_cli_and_api_use() -> None:
    from rag.answering.answer import make_source
    from rag.ingest.chunking import Chunk
    from rag.retrieval.retriever import Hit
    from ui.render import source_label

    chunk = Chunk(7, "# Fine-tuning vs prompting\n\nPrompting changes the input.", "slides.pptx",
                  "Fine-tuning vs prompting", (0, 50), {"slide": 12})
    src = make_source(1, Hit(chunk, 0.5, 1, {"dense": 0.5}), "Prompting changes the input.")
    assert src.to_dict()["slide"] == 12 and src.to_dict()["label"] == "slides.pptx · slide 12 · Fine-tuning vs prompting"
    title = source_label(src)
    assert title.replace("\\", "") == "[1] slides.pptx · slide 12 · Fine-tuning vs prompting · score 0.50 · supports the answer"
