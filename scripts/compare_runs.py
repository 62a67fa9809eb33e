"""Draw one figure comparing several runs from their result tables (rule compare_runs)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import compare_runs


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, compare_runs.run)


if __name__ == "__main__":
    main()
