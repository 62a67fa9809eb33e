"""Rank of t in LL(e_t), raw and centred (rule embedding_anisotropy)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import embedding_anisotropy


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, embedding_anisotropy.run)


if __name__ == "__main__":
    main()
