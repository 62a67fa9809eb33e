"""Trace an FF2 edit over K optimisation steps, one row per case, layer and step (rule ft_trace)."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import ft_trace


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, ft_trace.run)


if __name__ == "__main__":
    main()
