"""Seconds per edit of the Table 1 methods (rule edit_timings)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_timings


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_timings.run)


if __name__ == "__main__":
    main()
