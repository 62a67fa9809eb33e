"""Sample CounterFact prompts and label their tokens with ROME segments (rule sample_prompts)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import sample_prompts


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, sample_prompts.run)


if __name__ == "__main__":
    main()
