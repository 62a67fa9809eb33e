"""profiles/slurm sends exactly the model rules (those declaring `resources: gpu=1`) to the GPU
partition, and names only rules that exist. A rule sent to the CPU partition with --gpus=1 is
rejected by sbatch on a site whose CPU nodes have no GPUs (as the test cluster's QOS does);
a CPU rule sent to the GPU partition waits for a GPU it does not use."""

import yaml

from cluster_run import PROJECT_ROOT, gpu_rules, rule_bodies

PROFILE = yaml.safe_load((PROJECT_ROOT / "profiles/slurm/config.yaml").read_text())


def rule_names():
    return set(rule_bodies())


def test_the_gpu_partition_gets_exactly_the_model_rules():
    on_gpu = {rule for rule, resources in PROFILE["set-resources"].items() if resources.get("slurm_partition") == "gpu"}
    assert PROFILE["default-resources"]["slurm_partition"] != "gpu"
    assert "backward_lens_shard" in gpu_rules() and "backward_lens" not in gpu_rules()  # the parser sees both
    message = f"missing: {sorted(gpu_rules() - on_gpu)}, not a model rule: {sorted(on_gpu - gpu_rules())}"
    assert on_gpu == gpu_rules(), message


def test_the_profile_names_only_existing_rules():
    assert set(PROFILE["set-resources"]) <= rule_names(), sorted(set(PROFILE["set-resources"]) - rule_names())
