"""FF2 second moments for ROME/MEMIT and held-out perplexity blocks (rule edit_covariance)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import editing_covariance


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, editing_covariance.run)


if __name__ == "__main__":
    main()
