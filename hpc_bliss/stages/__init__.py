"""The stages, one module each; ``hpc_bliss.cli`` only parses arguments and calls them.

- :mod:`.simulate`: one batch sampled and rendered, as a PNG, text and a summary (a preview);
- :mod:`.generate`: MPI ranks simulate HDF5 shards; rank 0 writes the manifest and dataset.h5;
- :mod:`.train`: the encoder fitted on the shards (one process, local DDP or SLURM tasks);
- :mod:`.evaluate`: the encoder, SEP and the most frequent count scored on the test shards;
- :mod:`.pipeline`: generate → train → evaluate on this machine, each stage a subprocess.

Queuing the stages as SLURM jobs is :mod:`hpc_bliss.launch`.
"""
