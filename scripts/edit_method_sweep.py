"""A baseline method over its hyper-parameter grid (rule edit_method_sweep)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_method_sweep


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_method_sweep.run)


if __name__ == "__main__":
    main()
