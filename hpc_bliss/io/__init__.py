"""On-disk data: the shard schema (schema.py), HDF5 shards, the manifest, the virtual and the
collective files over them, and the reader."""
