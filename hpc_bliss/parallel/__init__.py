"""Process layout (rank, world, device) and the MPI generation driver."""
