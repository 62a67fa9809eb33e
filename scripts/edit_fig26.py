"""Fig 26 from the shift sweep (rule edit_fig26)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_figures


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_figures.run)


if __name__ == "__main__":
    main()
