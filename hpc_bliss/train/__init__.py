"""Training the encoder: data over shards, the LightningModule, and the `train` stage."""
