"""Evaluate one editing method on CounterFact (rule edit_evaluate)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_evaluate.run)


if __name__ == "__main__":
    main()
