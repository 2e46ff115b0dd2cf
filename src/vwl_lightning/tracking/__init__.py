"""The experiment platform: W&B runs and media (``wandb_runs``), Lightning loggers (``loggers``), and the
summary of a Hydra multirun (``sweep_summary``)."""
