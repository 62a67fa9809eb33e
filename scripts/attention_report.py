"""results/{run}/attention.md from the attention tables (rule attention_report)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import attention


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, attention.report)


if __name__ == "__main__":
    main()
