"""safetext: the one layer outside values pass on their way to HTML, Markdown and terminals.

The fault suite (tests/faults/test_output_payloads.py) checks the outputs in a real browser
and a real Markdown renderer; these check the layer's own promises directly.
"""

from __future__ import annotations

import pytest

from llorch_harness.safetext import Markup, html, join, md_code, md_text, term_text, text

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is in the `test` extra")


def _tokens(source: str) -> list[str]:
    md = markdown_it.MarkdownIt("gfm-like")
    out = []
    for tok in md.parse(source):
        out.append(tok.type)
        out += [c.type for c in tok.children or []]
    return out


def test_html_escapes_values_and_keeps_the_templates_markup() -> None:
    page = html('<td title="{0}">{0}</td>', '"><img src=x onerror=alert(1)>')
    assert page == '<td title="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;">' \
                   "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;</td>"
    assert html("<p>{}</p>", Markup("<b>ours</b>")) == "<p><b>ours</b></p>"
    assert join("<br>", ["<i>", Markup("<hr>")]) == "&lt;i&gt;<br><hr>"
    assert text(5) == "5" and isinstance(text("x"), Markup)


def test_html_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz0123")
    assert "hf_abcdefghijklmnopqrstuvwxyz0123" not in html("<p>{}</p>",
                                                          "token hf_abcdefghijklmnopqrstuvwxyz0123")


@pytest.mark.parametrize("value", [
    "[click](javascript:alert(1))", "![x](https://e.example/p.png)", "<img src=x>",
    "<https://e.example>", "https://e.example/x", "www.e.example", "a@e.example",
    "mailto:a@e.example", "[a][1]\n\n[1]: https://e.example", "*a* _b_ ~~c~~",
])
def test_md_text_never_makes_a_link_image_or_markup(value: str) -> None:
    kinds = _tokens(f"- model {md_text(value)} here\n\n| a | b |\n| --- | --- |\n"
                    f"| {md_text(value)} | x |\n")
    made = {"link_open", "image", "html_inline", "html_block", "em_open", "strong_open",
            "s_open", "code_inline"} & set(kinds)
    assert made == set(), (value, md_text(value))
    assert kinds.count("td_open") == 2  # no cell split


def test_md_text_keeps_ordinary_values_readable() -> None:
    assert md_text("Qwen2.5 0.5B (qwen-0.5b): model_runs ok") == \
        "Qwen2.5 0.5B (qwen-0.5b): model_runs ok"
    assert md_text("a\nb\tc") == "a b c"


@pytest.mark.parametrize("value", ["a`b", "``x``", "`", "a | b", "&lt;b&gt;", "<b>x</b>",
                                   "x` [y](z)"])
def test_md_code_is_one_code_span_showing_the_value(value: str) -> None:
    md = markdown_it.MarkdownIt("commonmark")
    [para] = [t for t in md.parse(md_code(value)) if t.type == "inline"]
    kinds = [c.type for c in para.children or []]
    assert kinds == ["code_inline"], (value, md_code(value), kinds)
    assert para.children[0].content.strip() == value.strip()


def test_term_text_shows_control_characters_escaped() -> None:
    assert term_text("a\x1b[2Jb\x07\r\x9b\u202e\n") == "a\\x1b[2Jb\\x07\\x0d\\x9b\\u202e\\x0a"
    assert term_text("ok ✅ é") == "ok ✅ é"
