"""The sequential-editing report from the joined table (rule sequential_report)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import sequential_report


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, sequential_report.run)


if __name__ == "__main__":
    main()
