"""Draw one figure from result tables (rule figure): `python scripts/render_figure.py figure=fig3`."""

import hydra
from omegaconf import DictConfig

from backlens.cli import run_stage
from backlens.stages import render_figure


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_stage(cfg, render_figure.run)


if __name__ == "__main__":
    main()
