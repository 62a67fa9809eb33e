"""Backward Lens on the attention projections W_Q, W_K, W_V, W_O, with Lemma 4.1 per projection (rule attention)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import attention


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, attention.run)


if __name__ == "__main__":
    main()
