"""Screen the known facts and choose the ones to trace (rule trace_screen)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import causal_tracing


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, causal_tracing.screen)


if __name__ == "__main__":
    main()
