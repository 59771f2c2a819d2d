"""offrl algorithms: one file per algorithm (importable as offrl.algos.<name>)."""
