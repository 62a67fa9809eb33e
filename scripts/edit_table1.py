"""Table 1 from the per-method results (rule edit_table1)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_tables


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_tables.run_table1)


if __name__ == "__main__":
    main()
