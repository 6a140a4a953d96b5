"""Launching stages as jobs (`hpc-bliss submit`).

- :mod:`.submit`: the `submit` command line (``add_submit_parser``) and its kinds of job;
- :mod:`.shape`: a job's shape (nodes, tasks and GPUs per node, CPUs per task) from the
  options and the config;
- :mod:`.site`: the partition and account, what sinfo says of the partition, and the check
  that the Trainer and the site agree with the shape;
- :mod:`.train_job`: training as a submitit job (SLURM, local processes or in-process);
- :mod:`.chain`: generate → train → evaluate as dependent sbatch jobs.
"""
