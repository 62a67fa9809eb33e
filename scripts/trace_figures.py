"""Causal-tracing figures from the tracing tables (rule tracing_figures)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import tracing_figures


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, tracing_figures.run)


if __name__ == "__main__":
    main()
