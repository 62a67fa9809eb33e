"""ROME segment labels on hand-checked prompts, for byte-level BPE and SentencePiece tokenizers."""

import pytest
from tokenizers import SentencePieceBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from backlens.data.counterfact import load_counterfact
from backlens.data.prompt_table import prompt_table
from backlens.data.segments import SegmentationError, first_target_token, segment_prompt
from backlens.models.loading import load_tokenizer
from conftest import FIXTURES, compose_config, require_shared


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return AutoTokenizer.from_pretrained(str(require_shared("assets", "gpt2_tokenizer")))


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return load_tokenizer(compose_config().model)


@pytest.fixture(scope="module")
def sentencepiece_tokenizer():
    """A small SentencePiece-style BPE ("▁" marks word starts), trained here on hand-written text."""
    corpus = [
        "Obama grew up in Hawaii.",
        "Jack Dorsey founded Twitter.",
        "The mother tongue of Danielle Darrieux is French.",
        "The Eiffel Tower is located in the city of Paris.",
    ] * 20
    trained = SentencePieceBPETokenizer()
    trained.train_from_iterator(corpus, vocab_size=120, min_frequency=2,
                                special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=trained, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def labels(segmented):
    return list(zip(segmented.tokens, segmented.primary))


def test_gpt2_bpe_leading_spaces(gpt2_tokenizer):
    # Tokens: 'The', ' mother', ' tongue', ' of', ' Danielle', ' Dar', 'rie', 'ux', ' is'
    segmented = segment_prompt(gpt2_tokenizer, "The mother tongue of Danielle Darrieux is", "Danielle Darrieux")
    assert labels(segmented) == [
        ("The", "prefix"), (" mother", "prefix"), (" tongue", "prefix"), (" of", "prefix"),
        (" Danielle", "first_subject"), (" Dar", "middle_subject"), ("rie", "middle_subject"),
        ("ux", "last_subject"), (" is", "last"),
    ]
    assert (segmented.subject_start, segmented.subject_end) == (4, 8)
    # " is" is both the first subsequent token and the last token, as in ROME's averages.
    assert segmented.flags["first_subsequent"][8] and segmented.flags["last"][8]


def test_gpt2_one_token_subject_is_first_and_last_subject(gpt2_tokenizer):
    # 'Obama', ' grew', ' up', ' in'
    segmented = segment_prompt(gpt2_tokenizer, "Obama grew up in", "Obama")
    assert segmented.primary == ("last_subject", "first_subsequent", "further", "last")
    assert segmented.flags["first_subject"][0] and segmented.flags["last_subject"][0]
    assert not any(segmented.flags["middle_subject"])


def test_smollm2_bpe_splits_the_subject(smollm2_tokenizer):
    # SmolLM2: 'Ob', 'ama', ' grew', ' up', ' in'
    segmented = segment_prompt(smollm2_tokenizer, "Obama grew up in", "Obama")
    assert labels(segmented) == [
        ("Ob", "first_subject"), ("ama", "last_subject"), (" grew", "first_subsequent"),
        (" up", "further"), (" in", "last"),
    ]


def sentencepiece_labels(tokenizer, prompt, subject):
    segmented = segment_prompt(tokenizer, prompt, subject)
    return list(zip(tokenizer.convert_ids_to_tokens(list(segmented.input_ids)), segmented.primary))


def test_sentencepiece_word_boundaries(sentencepiece_tokenizer):
    # "▁" marks a word start; the offsets of "▁fo" include the space before it, yet it is not subject.
    assert sentencepiece_labels(sentencepiece_tokenizer, "Jack Dorsey founded", "Jack Dorsey") == [
        ("▁Ja", "first_subject"), ("ck", "middle_subject"), ("▁Dor", "middle_subject"), ("sey", "last_subject"),
        ("▁fo", "first_subsequent"), ("unded", "last"),
    ]


def test_sentencepiece_subject_in_the_middle(sentencepiece_tokenizer):
    labelled = sentencepiece_labels(
        sentencepiece_tokenizer, "The mother tongue of Danielle Darrieux is", "Danielle Darrieux"
    )
    assert labelled == [
        ("▁The", "prefix"), ("▁mo", "prefix"), ("ther", "prefix"), ("▁tongu", "prefix"), ("e", "prefix"),
        ("▁of", "prefix"), ("▁Dan", "first_subject"), ("ielle", "middle_subject"), ("▁Dar", "middle_subject"),
        ("rieux", "last_subject"), ("▁is", "last"),
    ]


def test_subject_must_be_in_prompt(gpt2_tokenizer):
    with pytest.raises(SegmentationError, match="not found"):
        segment_prompt(gpt2_tokenizer, "Obama grew up in", "Biden")


def test_first_target_token(gpt2_tokenizer, smollm2_tokenizer, sentencepiece_tokenizer):
    assert first_target_token(gpt2_tokenizer, "Obama grew up in", "Paris") == 6342
    assert first_target_token(smollm2_tokenizer, "Obama grew up in", "Paris") == 7042
    sp_id = first_target_token(sentencepiece_tokenizer, "Obama grew up in", "Paris")
    assert sentencepiece_tokenizer.convert_ids_to_tokens(sp_id).startswith("▁")


def test_prompt_table_rows(gpt2_tokenizer):
    records = load_counterfact(FIXTURES / "counterfact_rome_form.json").records
    table = prompt_table(records, gpt2_tokenizer)
    obama = table[table.case_id == 1]
    assert list(obama.token) == ["Obama", " grew", " up", " in"]
    assert set(obama.target_new_id) == {6342}
    assert obama.is_last.tolist() == [False, False, False, True]
    assert table.groupby("case_id").n_tokens.first().to_dict() == {0: 9, 1: 4}


def test_prompt_table_names_the_case_that_cannot_be_segmented(gpt2_tokenizer):
    from backlens.data.counterfact import CounterFactRecord

    record = CounterFactRecord(case_id=42, prompt_template="{} grew up in", subject="Obama", target_new="Paris",
                               target_true="Hawaii", source_form="rome")
    broken = CounterFactRecord(**{**record.__dict__, "prompt_template": "He grew up in {}", "subject": ""})
    with pytest.raises(SegmentationError, match="case 42"):
        prompt_table([record, broken], gpt2_tokenizer)
