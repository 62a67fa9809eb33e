"""Join the backward_lens shards into the five analysis tables (rule backward_lens)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import backward_lens


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, backward_lens.merge)


if __name__ == "__main__":
    main()
