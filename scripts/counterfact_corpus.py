"""True CounterFact statements as a text corpus (rule counterfact_corpus)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import counterfact_corpus


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, counterfact_corpus.run)


if __name__ == "__main__":
    main()
