"""Join the shard tables of one editing method into its cases table and summary (rule edit_merge)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_evaluate.merge)


if __name__ == "__main__":
    main()
