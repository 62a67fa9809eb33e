"""Check Lemma 4.1 against autograd and cross-check ranks with full-matrix SVDs (rule lemma_check)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import lemma_check


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, lemma_check.run)


if __name__ == "__main__":
    main()
