"""Data stage: dataset readers, the paper's protocol, synthetic tiles and the LightningDataModule."""
