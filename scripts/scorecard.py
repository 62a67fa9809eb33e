"""Write docs/ from the default run's tables (rule scorecard)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import scorecard


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, scorecard.run)


if __name__ == "__main__":
    main()
