"""Job backends (local, Slurm, Kubernetes) and service templates."""
