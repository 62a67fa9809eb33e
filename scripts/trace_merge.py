"""Join the causal tracing shards into the tracing tables and summary (rule trace_merge)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import causal_tracing_merge


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, causal_tracing_merge.merge)


if __name__ == "__main__":
    main()
