"""The small FF2-statistics setting against the default, case for case (rule edit_small_statistics)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_small_statistics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_small_statistics.run)


if __name__ == "__main__":
    main()
