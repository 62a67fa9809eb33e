"""backlens.artifacts: one name and path per file, shared by the rules and conf/config.yaml's paths."""

from conftest import compose_config

from backlens.artifacts import ARTIFACTS, artifact, register_resolver


def test_a_path_keeps_the_fields_it_is_not_given_as_wildcards():
    assert artifact("editing_cases", method="rome") == "results/{run}/editing/rome/cases.parquet"
    assert artifact("tracing_shard", run="gpt2", shard="0-10") == "results/gpt2/tracing/shards/0-10.parquet"
    assert artifact("figure", stem="fig3") == "figures/{run}/fig3.pdf"


def test_registering_the_resolver_twice_is_harmless():
    register_resolver()
    register_resolver()
    assert compose_config().paths.prompts == "results/smollm2-135m/prompts.parquet"


def test_the_config_paths_are_the_registry_paths():
    cfg = compose_config("model=tiny-gpt2", "method=rome")
    named = [key for key in cfg.paths if key in ARTIFACTS and key != "figure"]
    assert len(named) > 50
    for key in named:
        assert cfg.paths[key] == artifact(key, run="tiny-gpt2", method="rome", shard="all", series="single"), key


def test_overriding_a_directory_moves_every_file_in_it(tmp_path):
    cfg = compose_config(f"paths.results={tmp_path}", f"paths.tracing={tmp_path}/t")
    assert cfg.paths.editing_stats == f"{tmp_path}/editing/ff2_mom2.pt"
    assert cfg.paths.table1 == f"{tmp_path}/tables/table1.csv"
    assert cfg.paths.tracing_facts == f"{tmp_path}/t/facts.parquet"
    assert cfg.paths.fig26 == "figures/smollm2-135m/fig26.pdf"
