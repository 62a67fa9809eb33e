"""Figure helpers: printable token text, readable text colour, one segment colour map."""

from backlens.data.segments import SEGMENTS
from backlens.figures.common import SEGMENT_COLOURS
from backlens.figures.lens_tables import _text_colour, display_token


def test_display_token_prints_what_the_font_can_draw():
    assert display_token(" Paris") == "Paris"
    assert display_token("\ufffd") == "[byte]"
    assert display_token("\u4e2d") == "?"  # a CJK character DejaVu Sans lacks
    assert display_token(" ") == "\u2423"
    assert display_token("abcdefghijklmnop") == "abcdefghi\u2026"


def test_text_colour_contrasts_with_the_cell():
    assert _text_colour((1.0, 1.0, 1.0, 1.0)) == "black"
    assert _text_colour((0.1, 0.0, 0.3, 1.0)) == "white"


def test_every_segment_has_one_colour():
    assert set(SEGMENTS) | {"prefix"} == set(SEGMENT_COLOURS)
    assert len(set(SEGMENT_COLOURS.values())) == len(SEGMENT_COLOURS)
