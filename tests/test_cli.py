"""The ``backlens`` command in-process on tiny-gpt2: each subcommand end to end, and every error the
user can fix as one ``error:`` line with exit status 1."""

from __future__ import annotations

import pandas as pd
import pytest

from backlens.commands.main import main
from conftest import require_shared

TINY = ["--model", "tiny-gpt2"]
EIFFEL = ["The Eiffel Tower is located in", "--subject", "The Eiffel Tower", "--target", " Rome"]


@pytest.fixture(autouse=True)
def _gpt2_tokenizer():
    require_shared("assets", "gpt2_tokenizer")


def test_explain_prints_the_lens_table_and_writes_csv_and_png(capsys, tmp_path):
    csv, png = tmp_path / "obama.csv", tmp_path / "obama.png"
    assert main(["explain", "Obama grew up in", " Paris", *TINY, "--csv", str(csv), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("pos"))
    for column in ("token", "layer", "LL(x) most", "LL(x) least", "LL(delta) most", "LL(delta) least", "rank/50257",
                   "|delta|"):
        assert column in header
    assert "' Paris'" in out
    table = pd.read_csv(csv)
    assert len(table) == 4 * 3 and {"x_top", "delta_bottom", "delta_target_rank", "delta_norm"} <= set(table)
    assert png.stat().st_size > 0


def test_explain_layers_and_last(capsys):
    assert main(["explain", "Obama grew up in", " Paris", *TINY, "--layers", "1-2", "--last"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("3 ")]
    assert [line.split()[3] for line in rows] == ["1", "2"]  # pos, token (quoted, with its space), layer


def test_edit_shows_top_tokens_before_and_after(capsys):
    assert main(["edit", "--method", "shift", *EIFFEL, *TINY, "--prompt", "The Louvre is in",
                 "--set", "eta=5", "--set", "skip_if_predicted=false"]) == 0
    out = capsys.readouterr().out
    assert "skipped=False" in out and "eta=5" in out
    assert out.count("p before") == 2 and "'The Louvre is in'" in out
    assert "weights restored" in out


def test_trace_prints_the_three_maps(capsys, tmp_path):
    png = tmp_path / "needle.png"
    assert main(["trace", "The Space Needle is in the city of", "--subject", "The Space Needle", *TINY,
                 "--samples", "2", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "hidden state" in out and "MLP output" in out and "attention output" in out
    assert "P(answer): clean" in out and png.stat().st_size > 0


@pytest.mark.parametrize("argv, expected", [
    (["explain", "Obama grew up in", " Paris", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["explain", "Obama grew up in", " Paris", *TINY, "--subject", "Biden"], "subject 'Biden' not found"),
    (["edit", "The Eiffel Tower is located in", "--subject", "Big Ben", "--target", " Rome", *TINY],
     "subject 'Big Ben' not found"),
    (["trace", "The Space Needle is in", "--subject", "Needle Space", *TINY], "subject 'Needle Space' not found"),
    (["explain", "Obama grew up in", "  ", *TINY], "tokenizes to nothing"),
    (["edit", *EIFFEL[:-1], "", *TINY], "tokenizes to nothing"),
    (["edit", "--method", "rome", *EIFFEL, *TINY, "--set", "stats_path=/nonexistent/ff2_mom2.pt"],
     "rome needs the FF2 statistics /nonexistent/ff2_mom2.pt"),
    (["edit", *EIFFEL, *TINY, "--set", "etta=1"], "shift has no hyper-parameter 'etta'"),
    (["explain", "Obama grew up in", " Paris", *TINY, "--layers", "7"], "the model has layers 0-2"),
])
def test_user_errors_are_one_line_and_exit_1(capsys, argv, expected):
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "backlens explain" in out and "backlens trace" in out
