"""CounterFact and known_1000 loaders: both forms, the shared files, broken records, downloads."""

import copy
import json

import pytest

from backlens.data.counterfact import load_counterfact, load_counterfact_from_config
from backlens.data.known_facts import load_known_facts, load_known_facts_from_config
from backlens.data.sources import DataUnavailableError, download_verified, resolve_data_file, sha256_of
from backlens.data.validation import DataFileError, InvalidRecordError
from conftest import FIXTURES, compose_config, require_shared

ROME_FIXTURE = FIXTURES / "counterfact_rome_form.json"
EASYEDIT_FIXTURE = FIXTURES / "counterfact_easyedit_form.json"


def test_rome_form_becomes_typed_records():
    dataset = load_counterfact(ROME_FIXTURE)
    assert dataset.source_form == "rome"
    first = dataset.records[0]
    assert first.prompt == "The mother tongue of Danielle Darrieux is"
    assert (first.target_new, first.target_true, first.relation_id) == ("English", "French", "P103")
    assert len(first.paraphrase_prompts) == 2
    assert first.neighborhood_prompts[0].answer == "French"
    assert first.attribute_prompts[0].answer == "English"
    assert first.generation_prompts[1].startswith("Where Danielle Darrieux")


def test_easyedit_form_finds_the_subject_slot():
    dataset = load_counterfact(EASYEDIT_FIXTURE)
    assert dataset.source_form == "easyedit"
    dorsey = dataset.records[1]
    assert (dorsey.case_id, dorsey.prompt_template, dorsey.subject) == (7, "{} founded", "Jack Dorsey")
    assert dorsey.neighborhood_prompts[0].answer == "Microsoft"
    assert dorsey.paraphrase_prompts == ("The company Jack Dorsey started is",)
    assert dorsey.attribute_prompts == () and dorsey.generation_prompts == ()


def test_both_forms_agree_on_the_shared_case():
    rome = load_counterfact(ROME_FIXTURE).records[0]
    easy = load_counterfact(EASYEDIT_FIXTURE).records[0]
    assert (rome.prompt, rome.subject, rome.target_new, rome.target_true) == (
        easy.prompt, easy.subject, easy.target_new, easy.target_true,
    )


def test_every_shared_counterfact_record_loads():
    path = require_shared("data", "counterfact", "counterfact_easyedit.json")
    dataset = load_counterfact(path)
    assert len(dataset) == 21919 and not dataset.skipped
    assert [r.case_id for r in dataset.records] == list(range(21919))


def test_every_shared_known_fact_loads():
    dataset = load_known_facts(require_shared("data", "known_1000.json"))
    assert len(dataset) == 1209
    assert dataset.records[0].subject == "Vinson Massif"


def test_config_resolves_the_shared_data_dir():
    require_shared("data")
    cfg = compose_config()
    assert load_counterfact_from_config(cfg.dataset).source_form == "easyedit"
    assert len(load_known_facts_from_config(cfg.known_facts)) == 1209


def _write(tmp_path, records, name="broken.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


BROKEN_ROME = [
    ("requested_rewrite.subject", lambda r: r["requested_rewrite"].pop("subject"), "missing"),
    ("requested_rewrite.target_new.str", lambda r: r["requested_rewrite"]["target_new"].update(str="  "), "empty"),
    ("requested_rewrite.prompt", lambda r: r["requested_rewrite"].update(prompt="no slot"), "subject slot"),
    ("case_id", lambda r: r.update(case_id="zero"), "expected an integer"),
    ("paraphrase_prompts", lambda r: r.update(paraphrase_prompts="not a list"), "list"),
]


@pytest.mark.parametrize("field, breaker, problem", BROKEN_ROME)
def test_broken_rome_record_names_file_case_and_field(tmp_path, field, breaker, problem):
    records = json.loads(ROME_FIXTURE.read_text())
    broken = copy.deepcopy(records)
    breaker(broken[1])
    path = _write(tmp_path, broken)
    with pytest.raises(InvalidRecordError) as caught:
        load_counterfact(path)
    message = str(caught.value)
    assert str(path) in message and repr(field) in message and problem in message
    assert caught.value.case_id in (1, "zero")
    assert "dataset.skip_invalid=true" in message


def test_easyedit_subject_not_in_prompt_is_reported(tmp_path):
    records = json.loads(EASYEDIT_FIXTURE.read_text())
    records[1]["subject"] = "Jack Kerouac"
    with pytest.raises(InvalidRecordError, match=r"case 7, field 'subject': subject 'Jack Kerouac' not found"):
        load_counterfact(_write(tmp_path, records))


def test_skip_invalid_counts_what_it_skips(tmp_path):
    records = json.loads(EASYEDIT_FIXTURE.read_text())
    records[0]["target_new"] = ""
    dataset = load_counterfact(_write(tmp_path, records), skip_invalid=True)
    assert [r.case_id for r in dataset.records] == [7]
    assert [(s.case_id, s.field) for s in dataset.skipped] == [(0, "target_new")]


def test_duplicate_case_ids_are_invalid(tmp_path):
    records = json.loads(EASYEDIT_FIXTURE.read_text())
    records[1]["case_id"] = 0
    with pytest.raises(InvalidRecordError, match="duplicate case_id"):
        load_counterfact(_write(tmp_path, records))


def test_known_fact_without_subject_in_prompt_is_reported(tmp_path):
    record = {"known_id": 3, "subject": "Paris", "attribute": "France", "template": "{} is in",
              "prediction": " France", "prompt": "Lyon is in", "relation_id": "P17"}
    with pytest.raises(InvalidRecordError, match="case 3, field 'subject'"):
        load_known_facts(_write(tmp_path, [record]))


def test_download_is_verified_by_sha256(tmp_path):
    source = tmp_path / "source.json"
    source.write_text("[]")
    good = sha256_of(source)
    target = download_verified(source.as_uri(), tmp_path / "cache" / "copy.json", good)
    assert target.read_text() == "[]"
    with pytest.raises(DataUnavailableError, match="does not match"):
        download_verified(source.as_uri(), tmp_path / "cache" / "bad.json", "0" * 64)
    assert not (tmp_path / "cache" / "bad.json").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["copy.json"]


def test_missing_data_without_network_says_how_to_fix(tmp_path):
    with pytest.raises(DataUnavailableError, match="BACKLENS_DATA_DIR"):
        resolve_data_file(name="CounterFact", path=None, data_dir=str(tmp_path), candidates=["counterfact.json"],
                          url=(tmp_path / "absent.json").as_uri(), sha256=None, cache_dir=str(tmp_path / "c"),
                          env_hint="BACKLENS_DATA_DIR")


def test_atomic_writes_leave_normal_permissions_and_no_temp_files(tmp_path):
    import os

    import pandas as pd

    from backlens.io import write_table

    write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    mode = (tmp_path / "t.parquet").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_failed_write_leaves_nothing(tmp_path):
    from backlens.io import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_known_facts_errors_name_the_known_facts_key(tmp_path):
    record = {"known_id": 3, "subject": "Paris", "attribute": "France", "template": "{} is in",
              "prediction": " France", "prompt": "Lyon is in", "relation_id": "P17"}
    with pytest.raises(InvalidRecordError) as caught:
        load_known_facts(_write(tmp_path, [record]))
    assert "known_facts.skip_invalid=true" in str(caught.value) and "dataset.skip_invalid" not in str(caught.value)


def test_a_file_that_is_not_json_gets_no_skip_hint(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    with pytest.raises(DataFileError) as caught:
        load_known_facts(path)
    message = str(caught.value)
    assert str(path) in message and "not valid JSON" in message and "known_facts.path" in message
    assert "skip_invalid" not in message
