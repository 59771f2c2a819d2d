"""offrl: single-file offline / offline-to-online / online RL algorithms on a shared core."""

__version__ = "0.1.0"
