"""Logit-lens tables of FF1 inputs and FF2 VJPs for the Fig 4 examples (rule logit_lens_examples)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import logit_lens_examples


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, logit_lens_examples.run)


if __name__ == "__main__":
    main()
