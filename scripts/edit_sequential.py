"""Edits without restoring: one method's single edits in sequence, or one batch update (rules edit_sequential, edit_batch)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_sequential


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_sequential.run)


if __name__ == "__main__":
    main()
