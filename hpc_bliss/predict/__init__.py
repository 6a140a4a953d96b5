"""Cataloguing real survey fields with a trained encoder: crops and their stitching
(:mod:`.crops`), the posterior per tile (:mod:`.posterior`), the catalog file (:mod:`.catalog_io`),
the residual against the image (:mod:`.residual`), figures (:mod:`.figures`), the work of each
rank (:mod:`.work`) and the SLURM job (:mod:`.submit`). The stage is
:mod:`hpc_bliss.stages.predict`."""
