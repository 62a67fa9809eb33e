"""Where the subject is in a prompt that mentions it twice: the template's slot says, not a text search."""

from __future__ import annotations

import pytest
import torch

from backlens.data.counterfact import CounterFactRecord, load_counterfact
from backlens.data.segments import SegmentationError, fill_template, locate_subject, place_subject, segment_prompt
from backlens.data.validation import InvalidRecordError
from backlens.editing.base import NoEdit
from backlens.editing.keys_values import optimise_target
from backlens.editing.requests import EditRequest
from backlens.models.hooks import record_module_io

# "Georgia" twice: the slot is the first one (the country's capital is asked for).
TEMPLATE = "The capital of {} is not in the state of Georgia, it is"
SUBJECT = "Georgia"
PROMPT = "The capital of Georgia is not in the state of Georgia, it is"
RECORD = CounterFactRecord(case_id=3, prompt_template=TEMPLATE, subject=SUBJECT, target_new="Paris",
                           target_true="Tbilisi", source_form="rome")
VALUE_HPARAMS = {"v_num_grad_steps": 1, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 4.0,
                 "kl_factor": 0.0625, "stop_below_loss": 5e-2, "fact_token": "subject_last"}


def test_the_slot_places_a_repeated_subject():
    assert RECORD.prompt == PROMPT
    assert fill_template(TEMPLATE, SUBJECT) == (PROMPT, 15)
    assert place_subject(TEMPLATE, SUBJECT) == (PROMPT, 15)
    request = EditRequest.from_record(RECORD)
    assert request.subject_start == RECORD.subject_start == 15
    # A context template before the prompt shifts the subject by the context's length.
    assert request.in_context("Georgia is far. {}") == ("Georgia is far. " + PROMPT, 16 + 15)


def test_free_text_with_a_repeated_subject_asks_for_the_slot():
    assert locate_subject("Obama grew up in", "Obama") == 0
    with pytest.raises(SegmentationError, match="occurs 2 times.*The capital of \\{\\} is not in the state of Georgia"):
        locate_subject(PROMPT, SUBJECT)
    with pytest.raises(SegmentationError, match="occurs 2 times"):
        place_subject(PROMPT, SUBJECT)
    with pytest.raises(SegmentationError, match="occurs 2 times"):
        EditRequest(0, PROMPT, SUBJECT, "Paris", "Tbilisi")


def test_easyedit_record_with_a_repeated_subject_is_invalid(tmp_path):
    path = tmp_path / "flat.json"
    path.write_text('[{"case_id": 5, "prompt": "%s", "subject": "%s", "target_new": "Paris", '
                    '"ground_truth": "Tbilisi", "rephrase_prompt": "Where is Georgia\'s capital?"}]' % (PROMPT, SUBJECT))
    with pytest.raises(InvalidRecordError, match="occurs 2 times"):
        load_counterfact(path)


def test_segments_follow_the_slot(tiny_gpt2):
    tokenizer = tiny_gpt2.tokenizer
    segmented = segment_prompt(tokenizer, PROMPT, SUBJECT, subject_char_start=RECORD.subject_start)
    first_mention = len(tokenizer("The capital of Georgia")["input_ids"])
    assert segmented.subject_end == first_mention
    with pytest.raises(SegmentationError, match="occurs 2 times"):
        segment_prompt(tokenizer, PROMPT, SUBJECT)


@torch.no_grad()
def mlp_outputs(loaded, layer: int, text: str) -> torch.Tensor:
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]], device=loaded.device)
    with record_module_io({"mlp": loaded.adapter.mlp(layer)}, inputs=False) as record:
        loaded.model(input_ids=ids)
    return record.outputs["mlp"][0]


def test_rome_value_is_read_at_the_slot_not_at_the_last_mention(tiny_model):
    """ROME's v* starts from the MLP output at the subject's last token: at the first "Georgia" here
    (where the slot is); a search from the right (the code before) found the second one."""
    editor = NoEdit(tiny_model, VALUE_HPARAMS)
    tokenizer = tiny_model.tokenizer
    value = optimise_target(editor, EditRequest.from_record(RECORD), ["{}"], 1, "mlp", VALUE_HPARAMS)
    outputs = mlp_outputs(tiny_model, 1, PROMPT)
    first_mention = len(tokenizer("The capital of Georgia")["input_ids"]) - 1
    second_mention = len(tokenizer("The capital of Georgia is not in the state of Georgia")["input_ids"]) - 1
    assert not torch.allclose(outputs[first_mention], outputs[second_mention])
    torch.testing.assert_close(value.initial, outputs[first_mention])
