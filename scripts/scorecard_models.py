"""Write docs/scorecard_models.md from several runs' tables (rule scorecard_models)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import scorecard_models


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, scorecard_models.run)


if __name__ == "__main__":
    main()

