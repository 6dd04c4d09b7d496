"""S3T exact deletion (Chowdhury et al., 2024): plan, slice-wise LoRA training, the deletion
ledger and serving the surviving adapter prefixes."""
