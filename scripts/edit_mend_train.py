"""Train MEND's editor networks (rule edit_mend_train)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_mend_train


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_mend_train.run)


if __name__ == "__main__":
    main()
