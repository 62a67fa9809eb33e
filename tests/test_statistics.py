"""FF2 second-moment statistics (rule edit_covariance): one pass for all layers equals one pass per
layer; WikiText's two failures (module missing, dataset unreachable) say which they are."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from backlens.editing import covariance
from backlens.editing.covariance import WikiTextUnavailableError, accumulate_second_moments, wikitext_blocks
from backlens.models.adapters import ArchitectureAdapter

CORPUS = {"source": "model_samples", "top_k": 5, "seed": 3, "block_tokens": 8, "batch_size": 2, "n_blocks": 3}


def test_one_pass_over_all_layers_equals_a_pass_per_layer(tiny_llama, tmp_path):
    layers = list(range(tiny_llama.adapter.n_layers))
    together = accumulate_second_moments(tiny_llama, layers, CORPUS, tmp_path / "all.partial")
    # 3 blocks of 8 tokens: the second batch of 2 is cut to its first block (held-out blocks start at 3).
    assert together["n_tokens"] == 3 * 8
    for layer in layers:
        alone = accumulate_second_moments(tiny_llama, [layer], CORPUS, tmp_path / f"{layer}.partial")
        # The same forward on the same batches: hooks on more layers change no arithmetic.
        assert torch.equal(together["sums"][layer], alone["sums"][layer])
        assert alone["n_tokens"] == together["n_tokens"]


def test_wikitext_without_the_datasets_module_names_the_extra(tiny_gpt2, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    monkeypatch.setattr(covariance, "_WIKITEXT_IDS", {})
    with pytest.raises(WikiTextUnavailableError, match=r"module 'datasets', which is not installed.*pip install '\.\[paper\]'"):
        wikitext_blocks(tiny_gpt2.tokenizer, 1, 8)


def test_wikitext_unreachable_is_not_reported_as_a_missing_module(tiny_gpt2, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    monkeypatch.setattr(covariance, "_WIKITEXT_IDS", {})
    with pytest.raises(WikiTextUnavailableError, match=r"WikiText is not reachable .*ConnectionError") as raised:
        wikitext_blocks(tiny_gpt2.tokenizer, 1, 8)
    assert "not installed" not in str(raised.value)


def test_the_small_setting_reads_whole_batches_and_a_partial_last_batch_is_cut():
    """blocks_for rounds the small setting up to whole corpus batches; a count that is not a multiple
    of the batch size reads only its blocks (held-out blocks start at n_blocks, after them)."""
    from backlens.editing.covariance import blocks_for

    corpus = {"n_blocks": 240, "block_tokens": 128, "batch_size": 16, "n_tokens_per_d_ff": 10}
    assert blocks_for(corpus, 1536) == 128  # 15,360 tokens = 120 blocks -> 8 batches of 16
    assert blocks_for({**corpus, "n_tokens_per_d_ff": None}, 1536) == 240


def test_statistics_up_to_the_highest_layer_equal_the_whole_forwards(tiny_model, tmp_path, monkeypatch):
    """The pass stops after the highest layer read (issue 23): the sums are the whole forward's, bit for bit."""
    if not tiny_model.adapter.supports_layer_ranges:
        pytest.skip("no layer-range forward: the statistics run the whole model")
    layers = [0, tiny_model.adapter.n_layers - 2]
    stopped = accumulate_second_moments(tiny_model, layers, CORPUS, tmp_path / "stopped.partial")
    monkeypatch.setattr(ArchitectureAdapter, "supports_layer_ranges", property(lambda self: False))
    whole = accumulate_second_moments(tiny_model, layers, CORPUS, tmp_path / "whole.partial")
    assert all(torch.equal(stopped["sums"][layer], whole["sums"][layer]) for layer in layers)
    assert stopped["n_tokens"] == whole["n_tokens"] == 3 * 8


def test_batches_sampled_together_are_the_batches_sampled_alone(tiny_model):
    """corpus_batches decodes several batches' rows at once (editing.corpus.sample_rows); each batch draws
    from its own generator, so its blocks are corpus_batch's token for token; held-out batches too."""
    corpus = {**CORPUS, "n_blocks": 8, "sample_rows": 6}  # 3 batches of 2 per decode: groups [0, 1, 2], [3]
    assert covariance.sampling_group(corpus) == 3
    for held_out in (False, True):
        together = covariance.corpus_batches(tiny_model, corpus, range(4), held_out=held_out)
        alone = [covariance.corpus_batch(tiny_model, {**corpus, "sample_rows": None}, index, held_out=held_out)
                 for index in range(4)]
        assert [block.shape for block in together] == [(2, 8)] * 4
        assert all(torch.equal(a, b) for a, b in zip(together, alone))
    # Batches differ from each other (a seed per batch), and held-out batches from statistics batches.
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(covariance.corpus_batch(tiny_model, corpus, 0), together[0])


def test_statistics_do_not_depend_on_how_many_rows_are_sampled_together(tiny_llama, tmp_path):
    grouped = accumulate_second_moments(tiny_llama, [0, 1], {**CORPUS, "sample_rows": 4}, tmp_path / "grouped.partial")
    lone = accumulate_second_moments(tiny_llama, [0, 1], {**CORPUS, "sample_rows": None}, tmp_path / "lone.partial")
    assert all(torch.equal(grouped["sums"][layer], lone["sums"][layer]) for layer in (0, 1))
    assert grouped["n_tokens"] == lone["n_tokens"] == 3 * 8


def test_sampling_group_is_whole_batches_and_at_least_one():
    assert covariance.sampling_group({"batch_size": 16, "sample_rows": 256}) == 16
    assert covariance.sampling_group({"batch_size": 16, "sample_rows": 40}) == 2
    assert covariance.sampling_group({"batch_size": 16, "sample_rows": 8}) == 1
    assert covariance.sampling_group({"batch_size": 16}) == 1


def _recording_groups(monkeypatch) -> list[list[int]]:
    """The batch indices of every corpus_batches call (statistics batches) from now on."""
    groups: list[list[int]] = []
    real = covariance.corpus_batches

    def recording(loaded, corpus, batch_indices, **kwargs):
        if not kwargs.get("held_out"):
            groups.append(list(batch_indices))
        return real(loaded, corpus, batch_indices, **kwargs)

    monkeypatch.setattr(covariance, "corpus_batches", recording)
    return groups


def test_a_run_resumed_inside_a_group_decodes_the_whole_group_again(tiny_llama, tmp_path, monkeypatch):
    """A checkpoint after batch 0 of a 2-batch group: the resumed run decodes batches 0-1 together as the
    uninterrupted run did (the same rows, whatever the thread count) and counts batch 0 once."""
    corpus = {**CORPUS, "n_blocks": 8, "sample_rows": 4}  # 4 batches of 2, groups [0, 1], [2, 3]
    checkpoint = tmp_path / "stats.partial"
    # The first batch alone is the state of the 8-block run after its first batch (n_blocks is not
    # part of the checkpoint's corpus: the run below resumes it).
    accumulate_second_moments(tiny_llama, [0, 1], {**corpus, "n_blocks": 2}, checkpoint)
    assert torch.load(checkpoint)["batches_done"] == 1
    groups = _recording_groups(monkeypatch)
    resumed = accumulate_second_moments(tiny_llama, [0, 1], corpus, checkpoint)
    assert groups == [[0, 1], [2, 3]]
    whole = accumulate_second_moments(tiny_llama, [0, 1], corpus, tmp_path / "whole.partial")
    assert resumed["n_tokens"] == whole["n_tokens"] == 8 * 8
    assert all(torch.equal(resumed["sums"][layer], whole["sums"][layer]) for layer in (0, 1))


def test_a_checkpoint_written_under_another_grouping_is_started_over(tiny_llama, tmp_path, monkeypatch, caplog):
    corpus = {**CORPUS, "n_blocks": 8, "sample_rows": 4}
    checkpoint = tmp_path / "stats.partial"
    accumulate_second_moments(tiny_llama, [0, 1], {**corpus, "n_blocks": 4, "sample_rows": None}, checkpoint)
    assert torch.load(checkpoint)["sampling_group"] == 1
    groups = _recording_groups(monkeypatch)
    with caplog.at_level("WARNING"):
        restarted = accumulate_second_moments(tiny_llama, [0, 1], corpus, checkpoint)
    assert "editing.corpus.sample_rows; starting over" in caplog.text
    assert groups == [[0, 1], [2, 3]]  # from batch 0, not from the checkpoint's batch 2
    assert restarted["n_tokens"] == 8 * 8 and torch.load(checkpoint)["sampling_group"] == 2
