"""On-disk data: HDF5 shards, the manifest and the virtual dataset over them."""
