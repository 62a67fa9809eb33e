"""Capture VJPs once and write gradient ranks, VJP norms, target ranks, neuron updates and VJP similarity (rule backward_lens)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import backward_lens


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, backward_lens.run)


if __name__ == "__main__":
    main()
